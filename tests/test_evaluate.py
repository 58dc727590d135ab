import json

import pytest
import torch

from madcache.data.records import Example, Text
from madcache.evaluate import classification_accuracy, record_eval, score, vcr_metrics


def _vcr(annot, mode, label):
    choices = tuple(Text.from_string(f"choice {k}") for k in range(4))
    return Example(id=f"{annot}:{mode}", dataset="vcr", split="val", image_id="i", image_path="i.jpg",
                   choices=choices, label=label, category="activity", group=annot)


def test_q2ar_needs_both_predictions_of_a_question_right():
    # question | qa right | qar right -> q2ar
    #    a     |   yes    |   yes     -> yes
    #    b     |   yes    |   no      -> no
    #    c     |   no     |   yes     -> no
    #    d     |   yes    |  (absent) -> no
    examples = [_vcr("a", "qa", 0), _vcr("a", "qar", 1), _vcr("b", "qa", 2), _vcr("b", "qar", 3),
                _vcr("c", "qa", 0), _vcr("c", "qar", 0), _vcr("d", "qa", 1)]
    predictions = [0, 1, 2, 0, 3, 0, 1]
    assert vcr_metrics(examples, predictions) == {
        "q2a": pytest.approx(75.0), "qa2r": pytest.approx(200 / 3), "q2ar": pytest.approx(25.0)}


def test_score_takes_the_argmax_per_dataset():
    examples = [_vcr("a", "qa", 2), _vcr("a", "qar", 1)]
    logits = torch.tensor([[0.0, 0.1, 0.9, 0.2], [0.0, 0.1, 0.9, 0.2]])
    assert score("vcr", examples, logits) == {"q2a": 100.0, "qa2r": 0.0, "q2ar": 0.0}
    snli = [Example(id=str(i), dataset="snli-ve", split="val", image_id="i", image_path="i.jpg",
                    choices=(Text.from_string("h"),), label=i % 3, category="c") for i in range(4)]
    assert classification_accuracy(snli, [0, 1, 0, 0]) == {"accuracy": 75.0}


def test_vqa_accuracy_uses_the_official_metric():
    vqa = pytest.importorskip("madcache.data.vqa")
    ex = Example(id="1", dataset="vqa", split="val", image_id="i", image_path="i.jpg",
                 choices=(Text.from_string("what color?"),), label=None, category="what color",
                 answers=("red",) * 2 + ("blue",) * 8)
    result = score("vqa", [ex], torch.tensor([[0.1, 0.9]]), answers=["blue", "red"])
    assert result["vqa_accuracy"] == pytest.approx(100 * vqa.vqa_accuracy("red", ex.answers))
    # two of ten humans said red: mean over the 10 leave-one-out sets of min(1, matches / 3)
    assert result["vqa_accuracy"] == pytest.approx(100 * (8 * 2 / 3 + 2 * 1 / 3) / 10)


def test_record_eval_keeps_the_rest_of_metrics_json(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "eval": {"val": {"q2a": 1}}}))
    record_eval(tmp_path, "val_sm", {"q2a": 2.0})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "status": "complete", "eval": {"val": {"q2a": 1}, "val_sm": {"q2a": 2.0}}}
