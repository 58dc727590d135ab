"""Where a sweep's runs execute: in local processes (the default) or as one Slurm job array.

`--executor slurm` submits every pending run as one task of a Slurm job array through submitit
(the library Meta's research code uses for Slurm). Resources come from the pipeline's `[slurm]`
table, overridden by `--slurm-*` flags (`SlurmSettings`). Each task runs the same job file as a
local run (`python -m madcache.experiments.sweep JOB.json`, output to the run's own
`sweep.log`); submitit's logs go to `<out>/slurm/`. A task's run takes its allocation's GPU
(`device = "auto"`: Slurm's CUDA_VISIBLE_DEVICES). On preemption or time-out Slurm signals the
task `signal_delay_s` early, submitit calls `RunJob.checkpoint`, which has the training process
write a checkpoint at its next step boundary (train/preemption.py), and requeues the task (at
most `max_requeue` times) with `resume = true`: the requeued run continues from that checkpoint,
which the trainer makes exact, and a run that already finished only evaluates what is missing.
`--dry-run` prints the sbatch script and the task -> run table instead of submitting.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madcache.core.errors import ConfigError
from madcache.experiments.grid import RunSpec, SweepConfig, job_payload
from madcache.experiments.runners import check_exit, start_job

SLURM_DIR = "slurm"
# Seconds `RunJob.checkpoint` waits for the run to write its checkpoint and exit; submitit's
# `signal_delay_s` (the warning before the kill) must be longer (SlurmSettings: 120).
CHECKPOINT_GRACE_S = 90
EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmSettings:
    """One array task's resources (a run). Keys of a pipeline's `[slurm]` table."""

    partition: str | None = None
    gpus_per_node: int = 1  # one task per array element, so: GPUs per run
    gpus_per_task: int | None = None  # --gpus-per-task instead of --gpus-per-node when given
    cpus_per_task: int = 8
    time_min: int = 240
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 64  # tasks running at once
    max_requeue: int = 3  # requeues after preemption / time-out
    signal_delay_s: int = 120  # the warning signal's lead on the kill (> the grace)
    setup: tuple[str, ...] = ()  # shell lines before the task (module load, venv)

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], *, where: str, overrides: Mapping[str, Any] | None = None
    ) -> SlurmSettings:
        """From a `[slurm]` table; `overrides` (CLI flags, None = not given) win. Unknown keys
        and wrong types raise `ConfigError` naming the key and the file."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: 'slurm' must be a table")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key 'slurm.{unknown[0]}'; valid keys in "
                f"[slurm]: {', '.join(sorted(fields))}"
            )
        values = {**table, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        return cls(**{name: _checked(name, value, where) for name, value in values.items()})

    def sbatch_parameters(self, name: str) -> dict[str, Any]:
        """The parameters of submitit's `SlurmExecutor` (they become the `#SBATCH` lines)."""
        params: dict[str, Any] = {
            "job_name": name,
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            "setup": list(self.setup),
        }
        if self.gpus_per_task is not None:
            params["gpus_per_task"] = self.gpus_per_task
        elif self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        params["signal_delay_s"] = self.signal_delay_s
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "mem": None if self.mem_gb is None else f"{int(self.mem_gb * 1024)}MB",
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


_TYPES = {
    "partition": str,
    "account": str,
    "qos": str,
    "constraint": str,
    "gpus_per_node": int,
    "gpus_per_task": int,
    "cpus_per_task": int,
    "time_min": int,
    "array_parallelism": int,
    "max_requeue": int,
    "signal_delay_s": int,
    "mem_gb": (int, float),
}
_MINIMUM = {
    "gpus_per_node": 0,
    "gpus_per_task": 0,
    "cpus_per_task": 1,
    "time_min": 1,
    "array_parallelism": 1,
    "max_requeue": 0,
    "signal_delay_s": CHECKPOINT_GRACE_S + 10,
    "mem_gb": 0,
}


def _checked(name: str, value: Any, where: str) -> Any:
    if name == "setup":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: 'slurm.setup' must be a list of shell lines")
        return tuple(value)
    expected = _TYPES[name]
    if isinstance(value, bool) or not isinstance(value, expected):
        kind = "a number" if name == "mem_gb" else expected.__name__
        raise ConfigError(f"{where}: 'slurm.{name}' must be {kind}, got {value!r}")
    if name in _MINIMUM and value < _MINIMUM[name]:
        raise ConfigError(f"{where}: 'slurm.{name}' must be >= {_MINIMUM[name]}, got {value!r}")
    return value


class RunJob:
    """One array task: execute one run's job file in a child process; on preemption, have it
    checkpoint and requeue the task so that it resumes from there."""

    def __init__(self, spec: RunSpec, payload: dict[str, Any]) -> None:
        self.spec = spec
        self.payload = payload
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:  # submitit pickles the job, not the process
        return {"spec": self.spec, "payload": self.payload}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["payload"])

    def __call__(self) -> str:
        self._child = start_job(self.spec, self.payload)
        try:
            # poll, not wait(): a blocking wait holds the Popen's lock, and submitit runs
            # `checkpoint` as a signal handler in this very thread
            while (code := self._child.poll()) is None:
                time.sleep(0.5)
        finally:
            self._child = None
        check_exit(self.spec, code)
        return self.spec.name

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this when Slurm signals preemption or time-out (SIGUSR2 in this,
        submitit's, process): forward SIGTERM to the training process, which writes a
        checkpoint at its next step boundary and exits (train/preemption.py), wait for it,
        then requeue the run with `resume = true`, so the requeued task continues from that
        checkpoint instead of step 0."""
        from submitit.helpers import DelayedSubmission

        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
            exited(child, timeout=CHECKPOINT_GRACE_S)  # else the last timed checkpoint resumes
        return DelayedSubmission(RunJob(self.spec, resumed(self.payload)))


def exited(child: subprocess.Popen, *, timeout: float) -> bool:
    """Whether `child` exits within `timeout` seconds. Watches it without reaping it
    (waitid WNOWAIT) and without the Popen's lock, which the interrupted code may hold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.returncode is not None:
            return True
        try:
            if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return True
        except ChildProcessError:  # reaped meanwhile by its own wait
            return True
        time.sleep(0.05)
    return False


def resumed(payload: dict[str, Any]) -> dict[str, Any]:
    """A job payload whose training run continues from its checkpoint when there is one
    (`resume` on a directory without a run starts afresh)."""
    if payload.get("kind") == "adapter":
        return payload
    return {**payload, "config": {**payload["config"], "resume": True, "overwrite": False}}


class SubmititExecutor:
    """Submits runs through submitit: `cluster="slurm"` (a job array) or `"local"` (submitit's
    local executor: the same pickling and job path on this machine, for tests)."""

    def __init__(self, settings: SlurmSettings, *, cluster: str = "slurm") -> None:
        self.settings = settings
        self.cluster = cluster

    def folder(self, config: SweepConfig) -> Path:
        return Path(config.out) / SLURM_DIR

    def job_name(self, config: SweepConfig) -> str:
        return f"madcache-{config.dataset}"

    def submit(
        self,
        config: SweepConfig,
        pending: Sequence[RunSpec],
        payload_of: Callable[[RunSpec], dict[str, Any]] | None = None,
    ) -> list[Any]:
        """Submit one task per run (one array on Slurm); returns submitit's job handles.
        `payload_of` builds a run's job (default: the sweep's `job_payload`)."""
        payload_of = payload_of or (lambda spec: job_payload(config, spec))
        if not pending:
            return []
        executor = self._executor(config)
        jobs = []
        with executor.batch():
            for spec in pending:
                jobs.append(executor.submit(RunJob(spec, payload_of(spec))))
        return jobs

    def _executor(self, config: SweepConfig):
        submitit = _submitit()
        folder = self.folder(config) / "%j"
        if self.cluster == "local":
            executor = submitit.LocalExecutor(
                folder=folder, max_num_timeout=self.settings.max_requeue
            )
            executor.update_parameters(
                timeout_min=self.settings.time_min, signal_delay_s=self.settings.signal_delay_s
            )
            return executor
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.settings.max_requeue)
        executor.update_parameters(**self.settings.sbatch_parameters(self.job_name(config)))
        return executor

    def preview(self, config: SweepConfig, pending: Sequence[RunSpec]) -> str:
        """What `submit` would send: the sbatch script of the array and its task -> run table."""
        _submitit()
        from submitit.slurm.slurm import _make_sbatch_string

        command = " ".join(
            [
                shlex.quote(sys.executable),
                "-u -m submitit.core._submit",
                shlex.quote(str(self.folder(config) / "%j")),
            ]
        )
        script = _make_sbatch_string(
            command=command,
            folder=self.folder(config) / "%j",
            map_count=len(pending) or None,
            **self.settings.sbatch_parameters(self.job_name(config)),
        )
        table = "\n".join(f"# task {i}: {spec.name}" for i, spec in enumerate(pending))
        return (
            f"{script}\n# {len(pending)} array task(s), requeued up to "
            f"{self.settings.max_requeue} time(s) on preemption or time-out\n{table}"
        )


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--executor slurm needs submitit: pip install 'madcache[slurm]'"
        ) from None
    return submitit


def make_executor(
    kind: str, config: SweepConfig, overrides: Mapping[str, Any] | None = None
) -> SubmititExecutor | None:
    """None for `local` (the sweep's own process runner); the `[slurm]` table is checked for
    every kind, so a typo shows before any run."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    settings = SlurmSettings.from_table(
        config.slurm, where=config.source or "sweep config", overrides=overrides
    )
    return None if kind == "local" else SubmititExecutor(settings)
