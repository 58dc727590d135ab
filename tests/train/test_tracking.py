"""`--report-to tensorboard`: the event files hold the run's scalars, per stage and step, and a
resumed run continues the curves. Stand-ins come from standins.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from madcache.core.errors import UnknownNameError
from madcache.train import loop as train_mod
from madcache.train.config import TrainConfig
from madcache.train.loop import lr_at, train

pytest.importorskip("tensorboard")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_event_files_hold_loss_terms_lr_cw_fired_and_eval(standins, tmp_path):
    metrics = train(
        standins.make_setup(
            tmp_path,
            method="mad",
            af_epochs=1,
            epochs=2,
            eval_every=3,
            report_to="tensorboard",
            grad_clip=5.0,
        )
    )
    logged = scalars(tmp_path / "run")
    for tag in (
        "af/loss",
        "af/mlm",
        "af/itm",
        "af/lr",
        "task/loss",
        "task/task",
        "task/dv",
        "task/dt",
        "task/dwt",
        "task/cw_fired",
        "task/lr",
        "task/grad_norm",
        "task/data_wait_s",
        "eval/val/q2a",
    ):
        assert tag in logged, tag
    task_steps = 6  # 10 examples, batch 4: 3 steps an epoch
    assert [s for s, _ in logged["af/loss"]] == [1, 2, 3]
    assert [s for s, _ in logged["task/loss"]] == list(range(4, 4 + task_steps))
    assert [v for _, v in logged["task/lr"]] == pytest.approx(
        [lr_at(i, task_steps, base=1e-2, warmup=0.1) for i in range(task_steps)]
    )
    assert all(0.0 <= v <= 1.0 for _, v in logged["task/cw_fired"])
    # metrics.json stays the record: the logged curves are its numbers
    evals = [(h["global_step"], h["eval"]["q2a"]) for h in metrics["history"] if "eval" in h]
    assert logged["eval/val/q2a"] == [(s, pytest.approx(v)) for s, v in evals]
    task_records = [h for h in metrics["history"] if h["stage"] == "task"]
    first = task_records[0]["loss"]  # the mean of task steps 1-3
    assert first == pytest.approx(sum(v for _, v in logged["task/loss"][:3]) / 3, rel=1e-5)


def test_a_resumed_run_continues_the_curves_without_forks(standins, tmp_path, monkeypatch):
    real = train_mod.StageLoss.forward
    calls = {"n": 0}

    def crash_at_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    options = dict(method="md", epochs=3, checkpoint_every=3, report_to="tensorboard")
    monkeypatch.setattr(train_mod.StageLoss, "forward", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(standins.make_setup(tmp_path, **options))
    monkeypatch.setattr(train_mod.StageLoss, "forward", real)
    train(standins.make_setup(tmp_path, resume=True, **options))
    steps = [s for s, _ in scalars(tmp_path / "run")["task/loss"]]
    assert steps == list(range(1, 10))  # step 4 (logged, then lost) is purged, not doubled


def test_report_to_names_are_checked():
    with pytest.raises(
        UnknownNameError,
        match="unknown tracker 'neptune'. Available: mlflow, none, tensorboard, wandb",
    ):
        TrainConfig(dataset="vcr", root=".", out="o", report_to="neptune")
