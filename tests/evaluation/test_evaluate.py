import json

from madcache.evaluation.evaluate import record_eval


def test_record_eval_keeps_the_rest_of_metrics_json(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "eval": {"val": {"q2a": 1}}}))
    record_eval(tmp_path, "val_sm", {"q2a": 2.0})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "status": "complete", "eval": {"val": {"q2a": 1}, "val_sm": {"q2a": 2.0}}}
