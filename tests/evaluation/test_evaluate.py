import json

import pytest

from madcache.evaluation.evaluate import record_eval

VCR_CS = "annotations/vcr_cs_val_original.jsonl"


def test_record_eval_keeps_the_rest_of_metrics_json(tmp_path):
    (tmp_path / "metrics.json").write_text(
        json.dumps({"status": "complete", "eval": {"val": {"q2a": 1}}})
    )
    record_eval(tmp_path, "val_sm", {"q2a": 2.0})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "status": "complete",
        "eval": {"val": {"q2a": 1}, "val_sm": {"q2a": 2.0}},
    }


@pytest.mark.real
def test_sm_evaluation_examples_are_the_rephrased_split(real_root, tmp_path):
    """`madcache eval --sm` scores the SM split: Q->A with rephrased answers, QA->R with the
    rephrased rationales after the rephrased right answer; records fitting no rule are out."""
    from madcache.train.config import TrainConfig
    from madcache.train.setup import load_eval_examples

    wanted = {"val-41", "val-72", "val-211"}
    lines = [
        line
        for line in (real_root / "vcr" / VCR_CS).open()
        if json.loads(line)["annot_id"] in wanted
    ]
    (tmp_path / "val.jsonl").write_text("".join(lines))
    config = TrainConfig(dataset="vcr", root=str(tmp_path), out=str(tmp_path / "run"))
    plain = {ex.id: ex for ex in load_eval_examples(config, "val")}
    sm = {ex.id: ex for ex in load_eval_examples(config, "val", sm=True)}
    assert len(plain) == 6 and sorted(sm) == [
        "val-211:qa",
        "val-211:qar",
        "val-72:qa",
        "val-72:qar",
    ]
    assert sm["val-72:qa"].choices[1].text == "He is distressed ."
    assert sm["val-72:qar"].context.text == "How is person1 feeling ? He is distressed ."
    assert sm["val-211:qar"].choices[2].text.startswith("They appear to be walking")
    assert plain["val-211:qar"].choices[2].text.startswith("person5 and person6 appear")
    assert sm["val-211:qar"].label == plain["val-211:qar"].label
