"""select = best: the run ends with the weights of its best validated task step (early stopping
on the eval split), records the curve and the step, and resumes to the same result."""

import json

import pytest
import torch
from safetensors.torch import load_file

from madcache.core.errors import CheckpointCorruptError, ConfigError
from madcache.train import loop
from madcache.train.checkpoint import SELECTED, best_step
from madcache.train.config import TrainConfig
from madcache.train.rundir import differences

SETTINGS = dict(method="md", epochs=6, eval_every=2, lr=5e-2, select="best")


def test_best_step_is_the_earliest_maximum_of_the_task_validations():
    history = [
        {"stage": "af", "step": 2, "eval": {"q2a": 90.0}},
        {"stage": "task", "step": 2, "eval": {"q2a": 30.0, "qa2r": 1.0}},
        {"stage": "task", "step": 3},
        {"stage": "task", "step": 4, "eval": {"q2a": 50.0, "qa2r": 0.0}},
        {"stage": "task", "step": 6, "eval": {"q2a": 50.0, "qa2r": 9.0}},
    ]
    assert best_step(history, None) == {
        "metric": "q2a",
        "step": 4,
        "score": 50.0,
        "curve": [[2, 30.0], [4, 50.0], [6, 50.0]],
    }
    assert best_step(history, "qa2r")["step"] == 6
    assert best_step(history[:1], None) is None
    with pytest.raises(
        ConfigError, match="select_metric: the eval split reports q2a, qa2r, not 'acc'"
    ):
        best_step(history, "acc")


def test_select_best_needs_validations():
    with pytest.raises(ConfigError, match="select: .best. .* set eval_every >= 1"):
        TrainConfig(dataset="vcr", root=".", out="o", select="best")
    TrainConfig(dataset="vcr", root=".", out="o", select="best", eval_every=5)


def test_eval_every_changes_the_result_of_a_select_best_run_only():
    assert (
        differences(
            {"eval_every": 2, "select": "last"}, {"eval_every": 3, "select": "last"}, {}, {}
        )
        == []
    )
    assert differences(
        {"eval_every": 2, "select": "best"}, {"eval_every": 3, "select": "best"}, {}, {}
    ) == ["eval_every: run 2, now 3"]


def test_the_run_ends_with_the_best_validated_weights(standins, tmp_path):
    metrics = loop.train(standins.make_setup(tmp_path, **SETTINGS))
    selection = metrics["selection"]
    scores = [h["eval"]["q2a"] for h in metrics["history"] if "eval" in h]
    assert [step for step, _ in selection["curve"]] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert selection["score"] == max(scores) and selection["split"] == "val"
    assert metrics["eval"]["val"]["q2a"] == selection["score"]
    # the run's curve has a best step before its last: the saved student is that step's
    assert selection["step"] < 18 and scores[-1] != max(scores)
    student = load_file(str(tmp_path / "run" / "student" / "model.safetensors"))
    chosen = load_file(str(tmp_path / "run" / SELECTED))
    for key, value in student.items():
        assert torch.equal(value, chosen[f"student.{key}"]), key
    # the student it saved scores what the chosen step scored
    setup = standins.make_setup(tmp_path / "again", **SETTINGS, device="cpu")
    setup.student.load_state_dict(student)
    assert loop.score_eval_split(setup)["q2a"] == selection["score"]


def test_last_is_the_default_and_writes_no_selection(standins, tmp_path):
    metrics = loop.train(standins.make_setup(tmp_path, **{**SETTINGS, "select": "last"}))
    assert "selection" not in metrics and not (tmp_path / "run" / SELECTED).exists()
    assert metrics["eval"]["val"] == metrics["history"][-1]["eval"]


def test_a_resumed_select_best_run_ends_as_an_uninterrupted_one(standins, tmp_path, monkeypatch):
    full = loop.train(standins.make_setup(tmp_path / "full", **SETTINGS, checkpoint_every=4))
    real, calls = loop.StageLoss.forward, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 11:  # after the checkpoint of step 8, before that of 12
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.StageLoss, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(standins.make_setup(tmp_path / "cut", **SETTINGS, checkpoint_every=4))
    monkeypatch.setattr(loop.StageLoss, "forward", real)
    resumed = loop.train(
        standins.make_setup(tmp_path / "cut", **SETTINGS, checkpoint_every=4, resume=True)
    )
    assert resumed["selection"] == full["selection"] and resumed["eval"] == full["eval"]
    assert resumed["history"] == full["history"]
    a, b = (
        load_file(str(tmp_path / n / "run" / "student" / "model.safetensors"))
        for n in ("full", "cut")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_selected_file_from_another_step_is_refused(standins, tmp_path):
    loop.train(standins.make_setup(tmp_path, **SETTINGS))
    path = tmp_path / "run" / SELECTED
    other = tmp_path / "other"
    loop.train(standins.make_setup(other, **{**SETTINGS, "lr": 1e-3}))
    chosen = json.loads((tmp_path / "run" / "metrics.json").read_text())["selection"]["step"]
    if json.loads((other / "run" / "metrics.json").read_text())["selection"]["step"] == chosen:
        pytest.skip("both runs chose the same step")
    path.write_bytes((other / "run" / SELECTED).read_bytes())
    setup = standins.make_setup(tmp_path, **SETTINGS, resume=True)
    (tmp_path / "run" / "metrics.json").unlink()
    setup_state = loop.load_checkpoint(tmp_path / "run", setup, loop.make_optimizer(setup))
    with pytest.raises(CheckpointCorruptError, match=f"validations chose step {chosen}"):
        loop.restore_selected(tmp_path / "run", setup, setup_state)
