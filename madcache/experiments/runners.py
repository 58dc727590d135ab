"""Running one job of a sweep: what a job does (`execute`), and the runners that start it.

A job is a run's resolved config plus the evaluations it must have (`grid.job_payload`). It
trains (or resumes) the run unless its metrics.json says "complete", then adds the missing
evaluations. The sweep runs each job in a fresh process by default, with its job file
(`sweep-job.json`) and its output (`sweep.log`) in the run directory:

- `forked_runner` (the default without GPUs) forks the process from a forkserver that imported
  torch and transformers once;
- `subprocess_runner` (with GPU slots, and on a Slurm cluster) starts
  `python -m madcache.experiments.sweep JOB.json`, the way to run one job file by hand;
- `in_process_runner` runs the job in the calling process (tests, notebooks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.core.errors import MadcacheError
from madcache.experiments.grid import SM_SUFFIX, RunSpec
from madcache.train.preemption import PREEMPTED_EXIT

JOB_FILE = "sweep-job.json"
LOG_FILE = "sweep.log"
# the command that executes a job file (`main` below, behind the sweep module's entry point)
JOB_COMMAND = ("-m", "madcache.experiments.sweep")


# ----------------------------------------------------------------------------- a run's state


def read_metrics(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def trained(metrics: Mapping[str, Any] | None) -> bool:
    return bool(metrics) and metrics.get("status") == "complete"


def missing_evals(metrics: Mapping[str, Any] | None, evals: Sequence[str]) -> list[str]:
    done = (metrics or {}).get("eval") or {}
    return [name for name in evals if name not in done]


def run_state(spec: RunSpec) -> str:
    """ "complete" (trained and every eval present), "evaluate" (trained, an eval missing) or
    "todo"."""
    metrics = read_metrics(spec.run_dir)
    if not trained(metrics):
        return "todo"
    return "evaluate" if missing_evals(metrics, spec.evals) else "complete"


# ----------------------------------------------------------------------------- a job


def execute(payload: Mapping[str, Any]) -> None:
    """Run one job in this process: train (or resume) unless complete, then the missing evals.
    An adapter evaluates while it trains: one that misses an eval is run again (seconds)."""
    directory = Path(payload["config"]["out"])
    metrics = read_metrics(directory)
    if payload["kind"] == "adapter":
        if not trained(metrics) or missing_evals(metrics, payload["evals"]):
            from madcache.evaluation.adapters import AdapterConfig, run_adapter

            run_adapter(AdapterConfig.from_dict(payload["config"]))
        return
    if trained(metrics):
        from madcache.train.rundir import check_same_run

        check_same_run(directory, payload["config"])
    else:
        from madcache.train.config import TrainConfig
        from madcache.train.loop import run_training

        metrics = run_training(TrainConfig.from_dict(payload["config"]))
    from madcache.evaluation.evaluate import evaluate_run

    for name in missing_evals(metrics, payload["evals"]):
        sm = name.endswith(SM_SUFFIX)
        evaluate_run(directory, split=name[: -len(SM_SUFFIX)] if sm else name, sm=sm)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m madcache.experiments.sweep JOB.json`: execute one job file written by the sweep.
    A `MadcacheError` (a refused resume, bad data) is one line on stderr and exit code 2, so the
    sweep's failure summary quotes it rather than the end of a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m madcache.experiments.sweep JOB.json", file=sys.stderr)
        return 2
    try:
        execute(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    except MadcacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # a preempted run: 75 (train/preemption.py)
    return 0


# ----------------------------------------------------------------------------- runners

Runner = Callable[[RunSpec, dict[str, Any]], None]


class RunFailed(RuntimeError):
    pass


def subprocess_runner(spec: RunSpec, payload: dict[str, Any]) -> None:
    """Run a job as its own process (`python -m madcache.experiments.sweep JOB.json`), output
    to its log."""
    check_exit(spec, start_job(spec, payload).wait())


def start_job(spec: RunSpec, payload: dict[str, Any]) -> subprocess.Popen:
    """Start `python -m madcache.experiments.sweep JOB.json` for a job, output to its log; the
    caller waits (a Slurm task keeps the handle to forward preemption: executors.RunJob)."""
    job, env = _job_file(spec, payload)
    with open(spec.run_dir / LOG_FILE, "a", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, *JOB_COMMAND, str(job)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def forked_runner(spec: RunSpec, payload: dict[str, Any]) -> None:
    """`subprocess_runner`'s contract (the job file, its log, its exit code, a fresh process per
    run) without paying the start-up of Python, torch and transformers for every run (~5-10 s on
    a busy 2-core machine): each run is forked from a forkserver that imported them once."""
    job, env = _job_file(spec, payload)
    process = _forkserver().Process(
        target=_run_forked, args=(str(job), str(spec.run_dir / LOG_FILE), env)
    )
    process.start()
    process.join()
    check_exit(spec, process.exitcode)


def in_process_runner(spec: RunSpec, payload: dict[str, Any]) -> None:
    """Run a job in this process (tests, notebooks); a GPU slot's environment is not applied."""
    execute(payload)


# Imported once by the forkserver, so every forked run starts with them loaded.
PRELOAD = (
    "madcache.train.loop",
    "madcache.evaluation.evaluate",
    "madcache.students",
    "madcache.students.single_stream",
    "transformers.models.bert.modeling_bert",
)


def _forkserver():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *PRELOAD])
    return context


def _run_forked(job: str, log: str, env: dict[str, str]) -> None:
    """The body of a forked run: the job's environment and log, then `main`, as the
    subprocess would (torch was imported before OMP_NUM_THREADS was set: apply it)."""
    os.environ.update(env)
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    code = main([job])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def _job_file(spec: RunSpec, payload: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """Write the run's job file; return it and the environment the run needs."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    job = spec.run_dir / JOB_FILE
    job.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    env = {"TQDM_DISABLE": "1", **payload.get("env", {})}
    if "threads" in payload and "OMP_NUM_THREADS" not in {**os.environ, **env}:
        env["OMP_NUM_THREADS"] = str(payload["threads"])  # N jobs x all cores each would thrash
    return job, env


def check_exit(spec: RunSpec, code: int | None) -> None:
    if code == PREEMPTED_EXIT:
        raise RunFailed(
            f"preempted (exit code {code}): its checkpoint is written; rerun the "
            f"sweep to resume it from there (see {spec.run_dir / LOG_FILE})"
        )
    if code != 0:
        tail = (spec.run_dir / LOG_FILE).read_text(encoding="utf-8").strip().splitlines()[-3:]
        raise RunFailed(f"exit code {code}; see {spec.run_dir / LOG_FILE}: " + " | ".join(tail))
