"""Preemption (train/preemption.py): a SIGTERM / SIGUSR1 to a training process writes a checkpoint
at the next step boundary and exits 75; `--resume` continues from that step (never from 0) and
ends with the weights and metrics of an uninterrupted run. Timed checkpoints
(`checkpoint_minutes`) are pure saves. The processes are real (tests/train/preempt_worker.py
trains the stand-ins of standins.py), the signals too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from madcache.train import loop as train_mod
from madcache.train.preemption import PREEMPTED_EXIT

WORKER = Path(__file__).with_name("preempt_worker.py")
REPO = Path(__file__).resolve().parents[2]
OPTIONS = dict(method="mad", af_epochs=1, chunk=4, epochs=5, eval_every=2)


def start(out: Path, options: dict) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    # same string hashes in every process: the stand-in targets are seeded from hash()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": path,
        "PYTHONHASHSEED": "0",
        "MADCACHE_PROGRESS_EVERY": "5",
    }  # a plain progress line every 5 steps
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), json.dumps(options)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=240)
    return process.returncode, err


def calls(out: Path) -> list[str]:
    path = out / "calls"
    return path.read_text().split() if path.is_file() else []


def run_files(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    run = out / "work" / "run"
    return (
        json.loads((run / "metrics.json").read_text()),
        load_file(str(run / "checkpoint.safetensors")),
    )


@pytest.mark.parametrize(
    "signum,after", [(signal.SIGTERM, 7), pytest.param(signal.SIGUSR1, 2, marks=pytest.mark.slow)]
)
def test_a_signalled_run_checkpoints_and_resumes_to_the_uninterrupted_result(
    tmp_path, signum, after
):
    """SIGTERM in the task stage, SIGUSR1 in the AF stage: exit 75 with a checkpoint at the
    step the signal fell in; the resumed process trains only the remaining steps; final
    weights (torch.equal), history, evaluations and CW counts equal an uninterrupted run's."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    code, err = finish(start(full, OPTIONS))
    assert code == 0, err[-3000:]
    total = len(calls(full))
    # no TTY: plain progress lines a batch log can read (step, loss, examples/s, ETA)
    assert "task (mad): 5/15 steps (33%), loss " in err and "examples/s, ETA " in err

    process = start(cut, {**OPTIONS, "sleep": 0.15})
    deadline = time.monotonic() + 120
    while len(calls(cut)) < after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signum)
    code, err = finish(process)
    assert code == PREEMPTED_EXIT, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume" in err
    state = json.loads((cut / "work" / "run" / "trainer_state.json").read_text())
    done = len(calls(cut))
    assert 0 < state["global_step"] == done < total
    assert not (cut / "work" / "run" / "metrics.json").exists()

    (cut / "calls").unlink()
    code, err = finish(start(cut, {**OPTIONS, "resume": True}))
    assert code == 0, err[-3000:]
    assert len(calls(cut)) == total - done  # continued; did not start over
    (a, wa), (b, wb) = run_files(full), run_files(cut)
    assert b["history"] == a["history"] and b["eval"] == a["eval"]
    assert b["cw_fired"] == a["cw_fired"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_timed_checkpoints_are_pure_saves(standins, tmp_path, monkeypatch):
    """checkpoint_minutes tiny (a checkpoint after every step) ends where 0 (off) ends."""
    saves = []
    real = train_mod.save_checkpoint
    monkeypatch.setattr(
        train_mod,
        "save_checkpoint",
        lambda run, setup, state, opt: (
            saves.append(state.global_step),
            real(run, setup, state, opt),
        ),
    )
    often = train_mod.train(
        standins.make_setup(tmp_path / "often", checkpoint_minutes=1e-9, **OPTIONS)
    )
    assert saves[:3] == [1, 2, 3] and len(saves) > 10
    saves.clear()
    never = train_mod.train(
        standins.make_setup(tmp_path / "never", checkpoint_minutes=0, **OPTIONS)
    )
    assert saves == [never["history"][-1]["global_step"]]  # the final one only
    assert often["history"] == never["history"] and often["eval"] == never["eval"]
    a = load_file(str(tmp_path / "often" / "run" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "never" / "run" / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_minutes_is_recorded_and_may_change_on_resume(standins, tmp_path):
    train_mod.train(standins.make_setup(tmp_path, checkpoint_minutes=5, **OPTIONS))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert config["checkpoint_minutes"] == 5 and config["device"] == inputs["device"] == "cpu"
    train_mod.train(standins.make_setup(tmp_path, checkpoint_minutes=1, resume=True, **OPTIONS))
