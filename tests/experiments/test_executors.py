"""Sweeps on a cluster: the [slurm] table, the sbatch script `--dry-run` shows, and the submitit
path run end to end with submitit's local executor (same pickling and job code, no Slurm)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from madcache.cli import cli
from madcache.core.errors import ConfigError
from madcache.experiments.executors import RunJob, SlurmSettings, SubmititExecutor
from madcache.experiments.sweep import load_sweep, plan, run_sweep

pytest.importorskip("submitit", reason="submitit (madcache[slurm]) is not installed")


def _sweep_tests():
    """tests/experiments/test_sweep.py (its pipeline text and toy adapter sweep), by path."""
    path = Path(__file__).with_name("test_sweep.py")
    spec = importlib.util.spec_from_file_location("sweep_tests_for_executors", str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sweep_tests = _sweep_tests()
SLURM = (
    '\n[slurm]\npartition = "gpu"\ncpus_per_task = 4\ntime_min = 30\nmem_gb = 16\n'
    'setup = ["module load cuda"]\n'
)


def test_slurm_table_is_checked_and_flags_win(tmp_path):
    config = load_sweep(sweep_tests.write(tmp_path, sweep_tests.PIPELINE + SLURM))
    settings = SlurmSettings.from_table(
        config.slurm, where="p.toml", overrides={"gpus_per_node": 2, "partition": None}
    )
    assert (settings.partition, settings.gpus_per_node, settings.cpus_per_task) == ("gpu", 2, 4)
    assert settings.sbatch_parameters("x")["mem"] == "16384MB"
    with pytest.raises(ConfigError, match=r"p.toml: unknown key 'slurm.gpus'; valid keys"):
        SlurmSettings.from_table({"gpus": 1}, where="p.toml")
    with pytest.raises(ConfigError, match=r"'slurm.time_min' must be int, got '1h'"):
        SlurmSettings.from_table({"time_min": "1h"}, where="p.toml")
    with pytest.raises(ConfigError, match=r"'slurm.setup' must be a list of shell lines"):
        SlurmSettings.from_table({"setup": "module load cuda"}, where="p.toml")


def test_dry_run_shows_the_sbatch_script_of_one_array(tmp_path):
    path = sweep_tests.write(tmp_path, sweep_tests.PIPELINE + SLURM)
    result = CliRunner().invoke(
        cli,
        [
            "sweep",
            str(path),
            "--executor",
            "slurm",
            "--dry-run",
            "--set",
            "seeds=[0]",
            "--slurm-gpus",
            "2",
            "--slurm-time",
            "90",
            "--slurm-account",
            "lab",
            "--slurm-qos",
            "high",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=90",
        "#SBATCH --mem=16384MB",
        "#SBATCH --array=0-5%6",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --job-name=madcache-vcr",
        "module load cuda",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "-m submitit.core._submit",
        "# task 0: vcr/single-stream/baseline/k2/seed0",
        "# task 5: vcr/single-stream/mad/k8/seed0",
        "requeued up to 3 time(s)",
    ):
        assert line in out, line
    assert f"#SBATCH --output={tmp_path}/runs/slurm/%A_%a/%A_%a_0_log.out" in out
    assert not (tmp_path / "runs" / "slurm").exists()  # nothing submitted
    bad = CliRunner().invoke(
        cli,
        [
            "sweep",
            str(
                sweep_tests.write(
                    tmp_path, sweep_tests.PIPELINE + "\n[slurm]\nnodes = 2\n", "bad.toml"
                )
            ),
            "--dry-run",
        ],
    )
    assert bad.exit_code == 2 and "unknown key 'slurm.nodes'" in bad.output


def test_slurm_resources_map_to_submitit(tmp_path):
    """[slurm] keys -> submitit's SlurmExecutor parameters (the #SBATCH lines)."""
    settings = SlurmSettings.from_table(
        {
            "partition": "gpu",
            "account": "lab",
            "qos": "high",
            "gpus_per_task": 1,
            "cpus_per_task": 16,
            "time_min": 60,
            "array_parallelism": 8,
        },
        where="p.toml",
    )
    params = settings.sbatch_parameters("x")
    assert {
        k: params[k]
        for k in (
            "partition",
            "account",
            "qos",
            "gpus_per_task",
            "cpus_per_task",
            "time",
            "array_parallelism",
            "signal_delay_s",
        )
    } == {
        "partition": "gpu",
        "account": "lab",
        "qos": "high",
        "gpus_per_task": 1,
        "cpus_per_task": 16,
        "time": 60,
        "array_parallelism": 8,
        "signal_delay_s": 120,
    }
    assert "gpus_per_node" not in params
    with pytest.raises(ConfigError, match=r"'slurm.signal_delay_s' must be >= 100"):
        SlurmSettings.from_table({"signal_delay_s": 30}, where="p.toml")


def test_a_requeued_task_resumes_its_run(tmp_path):
    """submitit's checkpoint hook requeues the same run with resume = true: the requeued task
    continues from the checkpoint, never from step 0 (the pickled job holds no process)."""
    import pickle

    config = load_sweep(sweep_tests.write(tmp_path))
    spec = plan(config)[0]
    job = RunJob(spec, {"kind": "train", "config": {"resume": False, "out": "o"}, "evals": []})
    again = pickle.loads(pickle.dumps(job.checkpoint().function))
    assert isinstance(again, RunJob) and again.spec == spec
    assert again.payload["config"] == {"resume": True, "overwrite": False, "out": "o"}


@pytest.mark.slow
def test_sweep_through_submitit_local_executor(tmp_path):
    """Every pending run becomes a submitit job; each writes its own sweep.log and a complete
    metrics.json; a second sweep submits nothing."""
    config = sweep_tests.adapter_sweep(tmp_path)
    executor = SubmititExecutor(SlurmSettings(time_min=10), cluster="local")
    result = run_sweep(
        config,
        executor=executor,
        progress=False,
        make_split=sweep_tests.index_splits(tmp_path / "caches/train"),
    )
    assert len(result.submitted) == 4 and not result.ran
    names = sorted(job.result() for job in result.submitted)
    assert names == sorted(spec.name for spec in result.planned)
    for spec in result.planned:
        metrics = json.loads((spec.run_dir / "metrics.json").read_text())
        assert metrics["status"] == "complete" and "val" in metrics["eval"]
        assert (spec.run_dir / "sweep.log").is_file()
    assert (tmp_path / "runs" / "slurm").is_dir()
    assert run_sweep(config, executor=executor, progress=False).submitted == []


def test_an_array_task_trains_on_its_allocations_gpu(tmp_path):
    """A sweep's job payload leaves the device to `auto` (cuda wherever Slurm gave a GPU), and
    every training run checkpoints on a timer by default."""
    from madcache.experiments.grid import job_payload
    from madcache.train.config import TrainConfig

    config = load_sweep(sweep_tests.write(tmp_path))
    spec = next(s for s in plan(config) if s.kind == "train")
    run = TrainConfig.from_dict(job_payload(config, spec)["config"])
    assert run.device == "auto" and run.resume and run.checkpoint_minutes == 30


SUBMITIT_LIKE = r"""
import json, signal, subprocess, sys, time
from types import SimpleNamespace
from madcache.experiments import executors

# the run: a process that takes 0.3 s to "checkpoint" after SIGTERM, then exits 75
CHILD = ("import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.3), sys.exit(75)))\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")
executors.start_job = lambda spec, payload: subprocess.Popen([sys.executable, "-c", CHILD],
                                                             stdout=subprocess.PIPE, text=True)
job = executors.RunJob(SimpleNamespace(name="r", run_dir=None),
                       {"kind": "train", "config": {"resume": False}, "evals": []})

def handler(signum, frame):            # what submitit does on SIGUSR2: checkpoint, then exit
    started = time.monotonic()
    child = job._child
    again = job.checkpoint()
    print(json.dumps({"seconds": time.monotonic() - started,
                      "child_exit": child.wait(timeout=5),
                      "resume": again.function.payload["config"]["resume"]}), flush=True)
    sys.exit(0)

signal.signal(signal.SIGUSR2, handler)
print("started", flush=True)
job()
"""


def test_checkpoint_as_a_signal_handler_waits_only_for_the_run(tmp_path):
    """submitit calls `RunJob.checkpoint` as a signal handler in the thread that waits for the
    run: it forwards SIGTERM, sees the run exit (0.3 s here) without the Popen lock that thread
    holds, and requeues with resume = true; no 90-second timeout."""
    import os
    import signal
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SUBMITIT_LIKE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout.readline().strip() == "started"
    time.sleep(1.5)  # the run has started and the task is waiting
    process.send_signal(signal.SIGUSR2)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["child_exit"] == 75 and result["resume"] is True
    assert result["seconds"] < 10
