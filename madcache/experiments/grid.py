"""The grid of a sweep: its axes (a `SweepConfig`, which experiments/pipeline.py reads from a
pipeline file and checks), one `RunSpec` per cell with its run directory, and the settings the
sweep gives each run.

`plan` expands methods x shots x seeds x students (x teacher caches) into `RunSpec`s, each in the
run directory derived from its cell:

    <out>/<dataset>/<student>/<method>[/<teachers>]/k<K>|full/seed<S>
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from madcache.core.errors import ConfigError
from madcache.evaluation.adapters import ADAPTER_STUDENT, ADAPTERS

SM_SUFFIX = "_sm"
SPLITS_DIR = "splits"


@dataclass(frozen=True)
class TeacherCaches:
    """One teacher set: the cache of the training split, and caches of evaluated splits (for
    zero-shot and adapters), by eval name (`val`, `val_sm`)."""

    name: str
    cache: str
    eval_caches: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepStudent:
    """A student of a sweep's `students` list: its registered name, options and the folder
    label of its runs (the registry's entry is `madcache.students.StudentSpec`)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def dirname(self) -> str:
        return self.label or self.name


@dataclass
class SweepConfig:
    """A pipeline file, resolved: placeholders substituted, paths absolute. Built and checked by
    `madcache.experiments.pipeline.from_dict`."""

    dataset: str
    root: str
    out: str
    methods: list[str]
    seeds: list[int]
    shots: list[int | None] = field(default_factory=lambda: [None])  # None = full data
    teachers: list[TeacherCaches] = field(default_factory=list)
    students: list[SweepStudent] = field(default_factory=lambda: [SweepStudent("single-stream")])
    regions: str | None = None
    eval: list[str] = field(default_factory=lambda: ["val"])
    zero_shot: bool = False
    train_split: str = "train"
    read_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)  # executors.SlurmSettings
    source: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    dataset: str
    method: str
    student: SweepStudent | None  # None for adapters (frozen teacher features)
    teacher: TeacherCaches | None  # None for a method that needs no teacher
    shots: int | None  # None = full data
    seed: int
    run_dir: Path
    evals: tuple[str, ...]
    name: str  # run_dir below the runs root (what --only matches)

    @property
    def kind(self) -> str:
        return "adapter" if self.method in ADAPTERS else "train"

    @property
    def split_key(self) -> tuple[int, int] | None:
        return None if self.shots is None else (self.shots, self.seed)


def shots_dir(shots: int | None) -> str:
    return "full" if shots is None else f"k{shots}"


def run_name(
    dataset: str, *, student: str, method: str, teacher: str | None, shots: int | None, seed: int
) -> str:
    """`<dataset>/<student>/<method>[/<teachers>]/k<K>|full/seed<S>`."""
    parts = [dataset, student, method] + ([teacher] if teacher else [])
    return "/".join([*parts, shots_dir(shots), f"seed{seed}"])


def plan(config: SweepConfig) -> list[RunSpec]:
    """Every run of the grid, in a fixed order (students, methods, teachers, shots, seeds).
    Adapters ignore the students; a method without distillation (baseline) runs once per
    cell, without a teacher cache."""
    from madcache.method.methods import METHODS

    specs: list[RunSpec] = []
    many = len(config.teachers) > 1
    for student in config.students:
        for method in config.methods:
            adapter = method in ADAPTERS
            if adapter and student != config.students[0]:
                continue
            uses_teacher = adapter or METHODS.get(method).distils
            teachers: list[TeacherCaches | None] = list(config.teachers) if uses_teacher else [None]
            for teacher in teachers:
                evals = tuple(e for e in config.eval if not adapter or e in teacher.eval_caches)
                for shots in config.shots:
                    for seed in config.seeds:
                        name = run_name(
                            config.dataset,
                            method=method,
                            shots=shots,
                            seed=seed,
                            student=ADAPTER_STUDENT if adapter else student.dirname,
                            teacher=teacher.name if many and uses_teacher else None,
                        )
                        specs.append(
                            RunSpec(
                                config.dataset,
                                method,
                                None if adapter else student,
                                teacher,
                                shots,
                                seed,
                                Path(config.out) / name,
                                evals,
                                name,
                            )
                        )
    return specs


def select(specs: Iterable[RunSpec], only: str | None) -> list[RunSpec]:
    if not only:
        return list(specs)
    try:
        pattern = re.compile(only)
    except re.error as exc:
        raise ConfigError(f"--only {only!r} is not a regular expression ({exc})") from None
    return [s for s in specs if pattern.search(s.name)]


def split_path(config: SweepConfig, shots: int, seed: int) -> Path:
    return Path(config.out) / SPLITS_DIR / f"{config.dataset}-k{shots}-seed{seed}.json"


def job_payload(config: SweepConfig, spec: RunSpec) -> dict[str, Any]:
    """What the worker process needs: the run's resolved config and the evals to have."""
    table = config.adapter if spec.kind == "adapter" else config.train
    return {
        "kind": spec.kind,
        "config": {**table, **run_settings(config, spec)},
        "evals": list(spec.evals),
    }


def run_settings(config: SweepConfig, spec: RunSpec) -> dict[str, Any]:
    """The settings the sweep sets for one run (so `[train]` / `[adapter]` may not set them).
    Every run resumes: its directory already holds the sweep's job file and log, and a rerun of
    the sweep continues a killed run (the run directory contract, docs/training.md)."""
    split = None if spec.shots is None else str(split_path(config, spec.shots, spec.seed))
    if spec.kind == "adapter":
        return {
            "dataset": config.dataset,
            "cache": spec.teacher.cache,
            "out": str(spec.run_dir),
            "method": spec.method,
            "root": config.root,
            "eval_caches": {e: spec.teacher.eval_caches[e] for e in spec.evals},
            "split_file": split,
            "per_category": spec.shots,
            "seed": spec.seed,
            "read_options": config.read_options,
            "resume": True,
        }
    plain = [e for e in spec.evals if not e.endswith(SM_SUFFIX)]
    eval_caches = (
        {plain[0]: spec.teacher.eval_caches[plain[0]]}
        if spec.teacher and plain and plain[0] in spec.teacher.eval_caches
        else {}
    )
    return {
        "dataset": config.dataset,
        "root": config.root,
        "out": str(spec.run_dir),
        "method": spec.method,
        "cache": spec.teacher.cache if spec.teacher else None,
        "eval_caches": eval_caches,
        "regions": config.regions,
        "split": config.train_split,
        "eval_split": plain[0] if plain else None,
        "read_options": config.read_options,
        "student": spec.student.name,
        "student_options": spec.student.options,
        "seed": spec.seed,
        "per_category": spec.shots,
        "split_file": split,
        "resume": True,
    }
