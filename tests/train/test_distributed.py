"""DDP under torchrun on the CPU (gloo, 2 processes) with the stand-ins of standins.py, run by
tests/train/ddp_worker.py: 2 processes train like 1, each reads only its share, evaluation is
gathered, rank 0 alone writes, a kill + resume ends where an uninterrupted run ends (also on a
changed world size), and the AF stage's gradients are synchronised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def torchrun(out: Path, options: dict, *, expect_ok: bool = True) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    # same string hashes in every process: the stand-in targets are seeded from hash()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(WORKER),
            str(out),
            json.dumps(options),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if expect_ok:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "work" / "run" / "checkpoint.safetensors"))


def in_a_fresh_process(*calls: tuple[Path, dict]) -> subprocess.CompletedProcess:
    """`ddp_worker.train_standin(out, options, dropout=0)` for each call, in one plain process
    that hashes strings like the torchrun workers (the stand-in targets are seeded from hash())."""
    body = "; ".join(
        f"m.train_standin(Path({str(out)!r}), {options!r}, dropout=0.0)" for out, options in calls
    )
    script = (
        f"import sys; sys.path[:0] = [{str(REPO)!r}]; import importlib.util; "
        f"from pathlib import Path; "
        f"spec = importlib.util.spec_from_file_location('w', {str(WORKER)!r}); "
        f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); {body}"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def assert_close_weights(a: dict, b: dict) -> None:
    """Equal to float tolerance. Not bit for bit: the all-reduce sums in another order, and
    Adam normalises gradients that are float noise (the multiple-choice head's bias has a zero
    true gradient; L1 terms' sign flips for residuals near 0)."""
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith(("student.", "projections.")) and key != "student.head.bias":
            assert torch.allclose(a[key], b[key], atol=1e-3), key


# dropout off, 10 examples in chunks of 4, a global batch of 4 (2 per rank), 3 epochs
COMMON = dict(method="md-ts", chunk=4, batch_size=4, epochs=3, eval_every=3, checkpoint_every=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same training by 2 processes (torchrun) and by 1."""
    base = tmp_path_factory.mktemp("ddp")
    torchrun(base / "two", {**COMMON, "dropout": 0.0})
    in_a_fresh_process((base / "one", COMMON))
    return base


@pytest.mark.slow
def test_two_processes_split_the_work_and_rank_0_alone_writes(reference):
    zero, one = ranks(reference / "two")
    metrics = json.loads((reference / "two" / "work" / "run" / "metrics.json").read_text())
    assert metrics == zero["metrics"]
    training = metrics["training"]
    assert (training["world_size"], training["batch_size"], training["per_rank_batch"]) == (2, 4, 2)
    # each rank read only its share: 3 epochs x 10 examples between them (+ borrowed rows)
    reads = training["data"]["task"]["rows_read"]
    assert 30 <= sum(reads) <= 34 and max(reads) < 20
    # evaluation is gathered: each rank scored 3 of the 6 validation examples, every time
    validations = sum(1 for h in metrics["history"] if "eval" in h)
    assert zero["eval_sizes"] == one["eval_sizes"] == [3] * validations
    # rank 0 alone writes; both ranks end with the same weights and history
    assert zero["saved"] >= 1 and one["saved"] == 0
    assert zero["weights"] == one["weights"]
    assert zero["metrics"]["history"] == one["metrics"]["history"]


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one(reference):
    """Dropout off, the same global batch: 1 and 2 processes end at the same weights and
    metrics (float tolerance)."""
    two = json.loads((reference / "two" / "work" / "run" / "metrics.json").read_text())
    one = json.loads((reference / "one" / "work" / "run" / "metrics.json").read_text())
    assert one["training"]["world_size"] == 1 and two["training"]["world_size"] == 2
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["step"] == b["step"] and a["eval"] == b["eval"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert_close_weights(weights(reference / "one"), weights(reference / "two"))


@pytest.mark.slow
def test_kill_and_resume_under_torchrun_ends_where_an_uninterrupted_run_ends(tmp_path):
    """With dropout on and an AF stage: rank 1 dies in task step 4 (after the checkpoint of
    global step 6), torchrun stops the job; the resumed job ends bit for bit where the
    uninterrupted one ends. Both ranks hold the same weights: AF's gradients were synchronised."""
    options = dict(
        method="md", af_epochs=1, chunk=4, batch_size=4, epochs=2, checkpoint_every=2, eval_every=2
    )
    torchrun(tmp_path / "full", options)
    full = ranks(tmp_path / "full")
    assert full[0]["weights"] == full[1]["weights"]
    cut = torchrun(tmp_path / "cut", {**options, "crash_at_call": 4}, expect_ok=False)
    assert cut.returncode != 0
    assert not (tmp_path / "cut" / "work" / "run" / "metrics.json").exists()
    torchrun(tmp_path / "cut", {**options, "resume": True})
    resumed = ranks(tmp_path / "cut")
    assert resumed[0]["metrics"]["history"] == full[0]["metrics"]["history"]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process(tmp_path, reference):
    """A changed world size resumes (the global batches do not depend on it): killed under
    torchrun after the checkpoint of step 4, finished by one process, it ends where the
    one-process run ends (dropout off)."""
    cut = torchrun(tmp_path, {**COMMON, "dropout": 0.0, "crash_at_call": 6}, expect_ok=False)
    assert cut.returncode != 0
    done = in_a_fresh_process((tmp_path, {**COMMON, "resume": True}))
    assert "resuming a run trained by 2 process(es) with 1" in done.stderr
    resumed = json.loads((tmp_path / "work" / "run" / "metrics.json").read_text())
    one = json.loads((reference / "one" / "work" / "run" / "metrics.json").read_text())
    assert resumed["training"]["world_size"] == 1
    for a, b in zip(one["history"], resumed["history"], strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert_close_weights(weights(reference / "one"), weights(tmp_path))


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_resumes(tmp_path):
    """SIGUSR1 to rank 1 only: both ranks stop after the same step (the flag travels with the
    step's loss parts), rank 0 writes the checkpoint, both exit 75; the resumed job ends bit for
    bit where an uninterrupted one ends."""
    import signal
    import time

    options = dict(method="md", af_epochs=1, chunk=4, batch_size=4, epochs=2, eval_every=2)
    torchrun(tmp_path / "full", options)
    out = tmp_path / "cut"
    out.mkdir()
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONHASHSEED": "0"}
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(WORKER),
            str(out),
            json.dumps({**options, "sleep": 0.2}),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    calls = out / "calls1"
    while time.monotonic() < deadline and not (
        calls.is_file() and calls.read_text() and int(calls.read_text()) >= 4
    ):
        time.sleep(0.05)
    os.kill(int((out / "pid1").read_text()), signal.SIGUSR1)
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0
    stopped = [(out / f"rank{r}.stopped").read_text() for r in (0, 1)]
    assert "stopped by a signal to another rank" in stopped[0]
    assert "stopped by SIGUSR1" in stopped[1]
    step = json.loads((out / "work" / "run" / "trainer_state.json").read_text())["global_step"]
    assert all(f"(global step {step})" in text for text in stopped), stopped
    torchrun(out, {**options, "resume": True})
    resumed, full = ranks(out), ranks(tmp_path / "full")
    assert resumed[0]["metrics"]["history"] == full[0]["metrics"]["history"]
    a, b = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
