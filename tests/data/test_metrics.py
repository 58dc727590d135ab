"""The one metrics implementation (madcache.data.metrics), hand-computed."""

import pytest
import torch

from madcache.data.metrics import (
    accuracy_scores,
    score_logits,
    vcr_scores,
    vqa_scores,
    without_counts,
)
from madcache.data.records import Example, Text


def _vcr(annot, mode, label):
    choices = tuple(Text.from_string(f"choice {k}") for k in range(4))
    return Example(
        id=f"{annot}:{mode}",
        dataset="vcr",
        split="val",
        image_id="i",
        image_path="i.jpg",
        choices=choices,
        label=label,
        category="activity",
        group=annot,
    )


def test_q2ar_needs_both_predictions_of_a_question_right():
    # question | qa right | qar right -> q2ar
    #    a     |   yes    |   yes     -> yes
    #    b     |   yes    |   no      -> no
    #    c     |   no     |   yes     -> no
    #    d     |   yes    |  (absent) -> no
    ids = ["a:qa", "a:qar", "b:qa", "b:qar", "c:qa", "c:qar", "d:qa"]
    labels = [0, 1, 2, 3, 0, 0, 1]
    predictions = [0, 1, 2, 0, 3, 0, 1]
    assert vcr_scores(ids, labels, [i.split(":")[0] for i in ids], predictions) == {
        "q2a": pytest.approx(75.0),
        "qa2r": pytest.approx(200 / 3),
        "q2ar": pytest.approx(25.0),
        "n": 4,
    }


def test_vcr_missing_qar_counts_wrong_and_unlabelled_left_out():
    result = vcr_scores(
        ["a:qa", "b:qa", "b:qar", "c:qa"], [1, 0, 2, None], ["a", "b", "b", "c"], [1, 0, 2, 3]
    )
    assert result == pytest.approx({"q2a": 100.0, "qa2r": 100.0, "q2ar": 50.0, "n": 2})


def test_a_metric_without_examples_is_absent_not_zero():
    assert vcr_scores(["a:qa", "b:qa"], [1, 0], ["a", "b"], [1, 1]) == {"q2a": 50.0, "n": 2}
    assert vcr_scores(["a:qa"], [None], ["a"], [0]) == {"n": 0}
    assert accuracy_scores([None, None], [0, 1]) == {"n": 0}
    assert vqa_scores(["red"], [()]) == {"n": 0}


def test_score_logits_takes_the_argmax_per_dataset():
    examples = [_vcr("a", "qa", 2), _vcr("a", "qar", 1)]
    logits = torch.tensor([[0.0, 0.1, 0.9, 0.2], [0.0, 0.1, 0.9, 0.2]])
    assert without_counts(score_logits("vcr", examples, logits)) == {
        "q2a": 100.0,
        "qa2r": 0.0,
        "q2ar": 0.0,
    }
    snli = [
        Example(
            id=str(i),
            dataset="snli-ve",
            split="val",
            image_id="i",
            image_path="i.jpg",
            choices=(Text.from_string("h"),),
            label=i % 3,
            category="c",
        )
        for i in range(4)
    ]
    assert accuracy_scores([ex.label for ex in snli], [0, 1, 0, 0]) == {"accuracy": 75.0, "n": 4}


def test_vqa_accuracy_uses_the_official_metric():
    from madcache.data import vqa

    ex = Example(
        id="1",
        dataset="vqa",
        split="val",
        image_id="i",
        image_path="i.jpg",
        choices=(Text.from_string("what color?"),),
        label=None,
        category="what color",
        answers=("red",) * 2 + ("blue",) * 8,
    )
    result = score_logits("vqa", [ex], torch.tensor([[0.1, 0.9]]), answers=["blue", "red"])
    assert result["vqa_accuracy"] == pytest.approx(100 * vqa.vqa_accuracy("red", ex.answers))
    # two of ten humans said red: mean over the 10 leave-one-out sets of min(1, matches / 3)
    assert result["vqa_accuracy"] == pytest.approx(100 * (8 * 2 / 3 + 2 * 1 / 3) / 10)
