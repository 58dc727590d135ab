"""Sweeps: many independent runs over one read-only cache (docs/evaluation.md, "Sweeps").

Read top-down, a sweep is four steps, one module each:

1. experiments/pipeline.py: a pipeline TOML file (+ `--set`) -> a checked `SweepConfig`
   (`load_sweep`);
2. experiments/grid.py: the grid methods x shots x seeds x students (x teacher caches) -> one
   `RunSpec` per run, each in its own run directory, and each run's settings (`plan`);
3. this module: `run_sweep` skips every run whose metrics.json says "complete" and holds every
   evaluated split, creates the low-shot split files once per (k, seed) under `<out>/splits/`
   (every method trains on the same examples), and dispatches the rest, `jobs` at a time,
   collecting the failures;
4. experiments/runners.py: one run as its own process (`python -m madcache.experiments.sweep
   JOB.json` executes one job file by hand).

A killed run leaves no "complete" metrics.json, so rerunning the sweep finishes only what is
missing (a half-trained run resumes from its checkpoint; a trained run that missed an
evaluation only evaluates).

GPUs (`gpus=["0", "1"]`, `jobs_per_gpu=K`): each GPU is K slots; a job takes a free slot, runs
with `CUDA_VISIBLE_DEVICES` set to that GPU (and device "cuda"), and gives the slot back, so
four GPUs run four seeds at once instead of stacking them on GPU 0.
"""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from madcache.core.errors import ConfigError
from madcache.core.io import check_output_location
from madcache.experiments.grid import (
    RunSpec,
    SweepConfig,
    TeacherCaches,
    job_payload,
    plan,
    select,
    split_path,
)
from madcache.experiments.pipeline import from_dict, load_sweep
from madcache.experiments.runners import Runner, forked_runner, main, run_state, subprocess_runner

# the entry points, for `from madcache.experiments.sweep import ...`
__all__ = [
    "SweepConfig",
    "SweepResult",
    "from_dict",
    "job_payload",
    "load_sweep",
    "main",
    "plan",
    "run_sweep",
]

ZERO_SHOT_DIR = "zero-shot"
SplitMaker = Callable[[int, int], Any]  # (k, seed) -> madcache.data.lowshot.Split


@dataclass
class SweepResult:
    planned: list[RunSpec]
    skipped: list[RunSpec] = field(default_factory=list)
    ran: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    zero_shot: list[Path] = field(default_factory=list)
    states: dict[Path, str] = field(default_factory=dict)
    submitted: list[Any] = field(default_factory=list)  # jobs of a cluster executor


def run_sweep(
    config: SweepConfig,
    *,
    jobs: int | None = 1,
    only: str | None = None,
    dry_run: bool = False,
    runner: Runner | None = None,
    make_split: SplitMaker | None = None,
    progress: bool = True,
    gpus: Sequence[str] | None = None,
    jobs_per_gpu: int = 1,
    report_to: str | None = None,
    executor: Any = None,
) -> SweepResult:
    """Run every missing run of the grid; see the module docstring. `jobs` None: one per GPU
    slot (one without GPUs); `report_to` sets each training run's tracker (--report-to). With an
    `executor` (experiments/executors.py: a Slurm job array) the pending runs are submitted,
    not run here."""
    check_locations(config, executor=executor, gpus=gpus)
    slots = gpu_slots(gpus, jobs_per_gpu) if gpus else None
    jobs = check_jobs(config, jobs, slots, jobs_per_gpu)
    if report_to is not None:
        from madcache.train.tracking import check_tracker

        check_tracker(report_to)  # a name and an installed package, before any run
    specs = select(plan(config), only)
    result = SweepResult(planned=specs, states={s.run_dir: run_state(s) for s in specs})
    pending = [s for s in specs if result.states[s.run_dir] != "complete"]
    result.skipped = [s for s in specs if result.states[s.run_dir] == "complete"]
    check_finished_runs_are_ours(config, result.skipped)
    if dry_run:
        return result
    if config.zero_shot:
        run_zero_shots(config, result)
    ensure_splits(config, pending, make_split or dataset_split_maker(config))

    def payload_of(spec: RunSpec) -> dict[str, Any]:
        payload = job_payload(config, spec)
        if report_to is not None and spec.kind == "train":
            payload["config"]["report_to"] = report_to
        return payload

    if executor is not None:
        result.submitted = executor.submit(config, pending, payload_of)
        return result
    run = runner or (subprocess_runner if slots else forked_runner)
    from madcache.core.progress import progress as progress_display

    with progress_display(
        total=len(specs),
        initial=len(result.skipped),
        desc="sweep",
        unit="run",
        disable=not progress,
    ) as bar:
        for spec, error in _dispatch(pending, payload_of, run, jobs, slots):
            (result.failed.append((spec, error)) if error else result.ran.append(spec))
            bar.update(1)
    return result


# ----------------------------------------------------------------------------- checks


def check_finished_runs_are_ours(config: SweepConfig, finished: Sequence[RunSpec]) -> None:
    """A finished run counts as this sweep's only if it was trained with this sweep's settings
    (another sweep over the same runs folder may have written it)."""
    from madcache.train.rundir import check_same_run

    for spec in (s for s in finished if s.kind == "train"):
        check_same_run(spec.run_dir, job_payload(config, spec)["config"])


def check_locations(config: SweepConfig, *, executor: Any, gpus: Sequence[str] | None) -> None:
    """The runs root may not overwrite an input or lie in the dataset root; --gpus is for
    local runs only."""
    if executor is not None and gpus:
        raise ConfigError(
            "--gpus places runs on this machine's GPUs; with --executor slurm "
            "each run gets the GPUs of its job (--slurm-gpus)"
        )
    check_output_location(
        config.out,
        roots=[config.root],
        option="out",
        inputs=[
            config.regions,
            *(t.cache for t in config.teachers),
            *(c for t in config.teachers for c in t.eval_caches.values()),
        ],
    )


def check_jobs(
    config: SweepConfig, jobs: int | None, slots: list[str] | None, jobs_per_gpu: int
) -> int:
    """The number of runs at once (default: one per GPU slot, else 1), checked against the
    slots and the device the pipeline's tables ask for."""
    jobs = jobs if jobs is not None else (len(slots) if slots else 1)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    for table in ("train", "adapter"):
        device = getattr(config, table).get("device")
        if slots and device is not None and device not in ("cuda", "auto"):
            raise ConfigError(
                f"--gpus runs every job on its GPU slot ('cuda') but {table}.device "
                f"is {device!r}: drop it from the pipeline or drop --gpus"
            )
    if slots and jobs > len(slots):
        raise ConfigError(
            f"--jobs {jobs} is more than the {len(slots)} GPU slot(s) of --gpus "
            f"{','.join(dict.fromkeys(slots))} x --jobs-per-gpu {jobs_per_gpu}"
        )
    return jobs


def gpu_slots(gpus: Sequence[str], jobs_per_gpu: int) -> list[str]:
    """One `CUDA_VISIBLE_DEVICES` value per concurrent job: every GPU `jobs_per_gpu` times, in
    round-robin order so that the first jobs go to different GPUs."""
    if jobs_per_gpu < 1:
        raise ConfigError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    names = [str(g).strip() for g in gpus]
    if not names or any(not g for g in names) or len(set(names)) != len(names):
        raise ConfigError(f"--gpus takes distinct GPU ids such as 0,1,2,3; got {','.join(names)}")
    return [gpu for _ in range(jobs_per_gpu) for gpu in names]


# ----------------------------------------------------------------------------- before the runs


def dataset_split_maker(config: SweepConfig) -> SplitMaker:
    """Samples splits from the training split's examples (read once, on first use)."""
    examples: list[Any] = []

    def make(k: int, seed: int):
        from madcache.data import lowshot, read_examples

        if not examples:
            examples.extend(
                read_examples(
                    config.dataset, config.root, config.train_split, **config.read_options
                ).examples
            )
        return lowshot.sample_per_category(examples, k=k, seed=seed)

    return make


def ensure_splits(config: SweepConfig, specs: Iterable[RunSpec], make: SplitMaker) -> list[Path]:
    """Create each (k, seed) split file the runs need, once; existing files are reused."""
    created = []
    for key in sorted({s.split_key for s in specs if s.split_key is not None}):
        path = split_path(config, *key)
        if path.is_file():
            continue
        temp = path.with_name(path.name + ".tmp")
        make(*key).save(temp)
        temp.replace(path)
        created.append(path)
    return created


def zero_shot_dir(config: SweepConfig, teacher: TeacherCaches, eval_name: str) -> Path:
    return Path(config.out) / config.dataset / ZERO_SHOT_DIR / teacher.name / eval_name


def run_zero_shots(config: SweepConfig, result: SweepResult) -> None:
    """Teacher-only results of each evaluated split that has a cache (skipped when present)."""
    from madcache.evaluation.zeroshot import RESULT_JSON, run_zero_shot

    for teacher in config.teachers:
        for name in config.eval:
            if name not in teacher.eval_caches:
                continue
            out = zero_shot_dir(config, teacher, name)
            if not (out / RESULT_JSON).is_file():
                run_zero_shot(teacher.eval_caches[name], root=config.root, out=out)
            result.zero_shot.append(out / RESULT_JSON)


# ----------------------------------------------------------------------------- dispatch


def on_slot(payload: dict[str, Any], gpu: str) -> dict[str, Any]:
    """`payload` for a job on GPU `gpu`: that GPU is the job's only visible one, its "cuda"."""
    return {
        **payload,
        "config": {**payload["config"], "device": "cuda"},
        "env": {**payload.get("env", {}), "CUDA_VISIBLE_DEVICES": gpu},
    }


def _dispatch(
    pending: list[RunSpec],
    payload_of: Callable[[RunSpec], dict[str, Any]],
    run: Runner,
    jobs: int,
    slots: list[str] | None,
) -> Iterable[tuple[RunSpec, str | None]]:
    """Yield (spec, error or None) as runs finish; one at a time in this thread when jobs == 1
    (an interrupt stops the sweep at once), else `jobs` at once. With GPU slots, each job holds
    a free slot while it runs."""
    free: queue.Queue[str] | None = None
    if slots:
        free = queue.Queue()
        for slot in slots:
            free.put(slot)

    def attempt(spec: RunSpec, payload: dict[str, Any]) -> str | None:
        if free is None:
            return _attempt(run, spec, payload)
        slot = free.get()
        try:
            return _attempt(run, spec, on_slot(payload, slot))
        finally:
            free.put(slot)

    if jobs == 1:
        for spec in pending:
            yield spec, attempt(spec, payload_of(spec))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(attempt, s, {**payload_of(s), "threads": threads}): s for s in pending
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


def _attempt(run: Runner, spec: RunSpec, payload: dict[str, Any]) -> str | None:
    try:
        run(spec, payload)
    except Exception as exc:  # one failed run does not stop the others
        return f"{type(exc).__name__}: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
