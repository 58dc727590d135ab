"""The main job on the built-in demo world, end to end: what `make demo` runs.

world -> demo teacher (pretrained on the world's captions) -> demo student (VL-pretrained on
the same captions with MLM + ITM) -> teacher caches (train, val) -> student region features ->
the regime check (teacher zero-shot vs the baseline on a dev split held out of train: it picks
the shot size) -> the demo sweep (baseline / MD / MAD x seeds, standard and SM evaluation,
zero-shot) -> report (the ablations are `madcache demo diagnose`). Every step keeps what an
earlier run finished, so a rerun (or a run after a kill) only does what is missing.

This module drives the pipeline through the same library functions the CLI commands call; it
is the one place that sees both sides of the cache, which is why the trainer itself never does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from madcache.core.config import check_ranges, config_from_dict, setting
from madcache.core.errors import MadcacheError
from madcache.core.progress import PROGRESS_HELP
from madcache.demo.world import SIZES

DEMO_DATASET = "vcr"
PIPELINE = Path(__file__).with_name("demo.toml")
REGIME = Path(__file__).with_name("regime.toml")


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage of the demo writes, under one folder (default `demo/`)."""

    out: Path

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def teacher(self) -> Path:
        return self.out / "teacher" / "madcache-demo.safetensors"

    def cache(self, split: str) -> Path:
        return self.out / "cache" / f"{DEMO_DATASET}-{split}"

    @property
    def student(self) -> Path:
        return self.out / "student"

    @property
    def regions(self) -> Path:
        return self.out / "regions"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def report(self) -> Path:
        return self.out / "report"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings (the flags of `madcache demo run`)."""

    out: Path = setting(Path("demo"), help="Folder for every stage's output (reused on rerun).")
    size: Literal[tuple(SIZES)] = setting(
        "default", help="Demo world size (small: a quick smoke run)."
    )
    seed: int = setting(0, minimum=0, help="World and teacher seed.")
    teacher_steps: int | None = setting(
        None, minimum=1, help="Demo teacher pretraining steps (default: the teacher's own)."
    )
    student_steps: int | None = setting(
        None, minimum=1, help="Demo student pretraining steps (default: the student's own)."
    )
    jobs: int = setting(2, minimum=1, help="Training runs at once.")
    workers: int = setting(0, minimum=0, help="Extraction worker processes.")
    pipeline: Path = setting(PIPELINE, existing_file=True, help="The demo pipeline file.")
    regime: Path = setting(
        REGIME, existing_file=True, help="The regime check's spec (shots tried, seeds, margin)."
    )
    overrides: tuple[str, ...] = setting(
        (),
        flag="set",
        metavar="KEY=VALUE",
        help="Override a setting of the demo pipeline "
        "(madcache/demo/demo.toml), e.g. seeds=[0,1] "
        "(repeatable).",
    )
    progress: bool = setting(True, help=PROGRESS_HELP)
    threads: int = setting(
        1,
        minimum=1,
        help="torch threads of each of the demo's own stages "
        "(teacher, student, caches), which run side by "
        "side instead: pinned so a rerun on the same "
        "machine gives the same numbers.",
    )

    def __post_init__(self) -> None:
        check_ranges(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DemoConfig:
        return config_from_dict(cls, values, noun="demo option")


def run_demo(config: DemoConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) every stage; return the report summary and the stage timings."""
    import torch

    from madcache.experiments.sweep import run_sweep

    paths = DemoPaths(Path(config.out))
    timings: dict[str, float] = {}
    torch.set_num_threads(config.threads)

    def stage(name: str, action: Callable[[], Any]) -> Any:
        log(f"[demo] {name} ...")
        start = time.perf_counter()
        result = action()
        timings[name] = round(time.perf_counter() - start, 1)
        log(f"[demo] {name}: done in {timings[name]:.1f} s")
        return result

    load_pipeline(paths, config)  # a bad --set fails now, not after the caches
    stage("world", lambda: make_world(paths, config))
    # The teacher and the student learn from the captions alone, and the two caches need only
    # the teacher: each pair runs side by side, one process and one thread each.
    teacher, student = stage(
        "teacher + student",
        lambda: side_by_side((make_teacher, paths, config), (make_student, paths, config)),
    )
    stage(
        "caches",
        lambda: side_by_side(
            (make_cache, paths, config, "train"), (make_cache, paths, config, "val")
        ),
    )
    stage("regions", lambda: make_regions(paths, config))
    regime = stage("regime", lambda: check_regime_first(paths, config, log))
    pipeline = load_pipeline(paths, config, shots=regime["shots"])
    sweep = stage("sweep", lambda: run_sweep(pipeline, jobs=config.jobs, progress=config.progress))
    report = stage("report", lambda: make_report(paths, regime, student, pipeline.train))
    return {
        "paths": paths,
        "timings": timings,
        "teacher": teacher,
        "student": student,
        "regime": regime,
        "sweep": sweep,
        "report": report,
    }


def side_by_side(*calls: tuple) -> list[Any]:
    """`function(*args)` of each call in a process of its own (spawned, so torch starts fresh),
    at the same time; their results in order. A `MadcacheError` in one is raised here, as one
    line."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(calls), mp_context=context) as pool:
        futures = [pool.submit(_call_reporting_errors, call[0], *call[1:]) for call in calls]
        outcomes = [future.result() for future in futures]
    for outcome in outcomes:
        if "error" in outcome:
            raise MadcacheError(outcome["error"])
    return [outcome["result"] for outcome in outcomes]


def _call_reporting_errors(function: Callable[..., Any], *args: Any) -> dict[str, Any]:
    try:
        return {"result": function(*args)}
    except MadcacheError as exc:  # its own attributes may not survive pickling
        return {"error": str(exc)}


def make_world(paths: DemoPaths, config: DemoConfig) -> dict[str, Any]:
    from madcache.demo.world import generate_demo_world

    return generate_demo_world(
        paths.world, size=config.size, seed=config.seed, progress=config.progress
    )


def make_teacher(paths: DemoPaths, config: DemoConfig) -> dict[str, Any]:
    from madcache.demo.teacher import DemoTeacherConfig, pretrain_demo_teacher

    options: dict[str, Any] = {"seed": config.seed, "threads": config.threads}
    if config.teacher_steps is not None:
        options["steps"] = config.teacher_steps
    return pretrain_demo_teacher(
        DemoTeacherConfig(data=paths.world, out=paths.teacher, **options), progress=config.progress
    )


def make_student(paths: DemoPaths, config: DemoConfig) -> dict[str, Any]:
    from madcache.demo.student import DemoStudentConfig, pretrain_demo_student

    options: dict[str, Any] = {"seed": config.seed, "threads": config.threads}
    if config.student_steps is not None:
        options["steps"] = config.student_steps
    return pretrain_demo_student(
        DemoStudentConfig(data=paths.world, out=paths.student, **options), progress=config.progress
    )


def check_regime_first(
    paths: DemoPaths, config: DemoConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """The preconditions on the dev split, with the baseline and the teacher alone
    (madcache/demo/regime.py): they choose the shot size every method then runs at."""
    from madcache.demo.regime import check_regime, load_regime
    from madcache.demo.search import resolved_base

    pipeline = load_pipeline(paths, config)
    return check_regime(
        paths.out,
        pipeline=pipeline,
        base=resolved_base(pipeline),
        cache=paths.cache("train"),
        spec=load_regime(config.regime),
        jobs=config.jobs,
        progress=config.progress,
        log=log,
    )


def make_cache(paths: DemoPaths, config: DemoConfig, split: str) -> dict[str, Any]:
    from madcache.extraction import ExtractConfig, extract

    return extract(
        ExtractConfig(
            dataset=DEMO_DATASET,
            root=paths.world / DEMO_DATASET,
            split=split,
            teacher="madcache-demo",
            checkpoint=paths.teacher,
            out=paths.cache(split),
            workers=config.workers,
            threads=config.threads,
            progress=config.progress,
        )
    )


def make_regions(paths: DemoPaths, config: DemoConfig) -> dict[str, Any]:
    from madcache.students.regions import build_region_store

    return build_region_store(
        dataset=DEMO_DATASET,
        root=paths.world / DEMO_DATASET,
        split=["train", "val"],
        extractor="boxcrop",
        out=paths.regions,
        progress=config.progress,
    )


def load_pipeline(paths: DemoPaths, config: DemoConfig, *, shots: int | None = None):
    """The demo sweep's config: the pipeline file with `DEMO_DIR`, the shot size the regime
    check chose (when given), then the `--set` overrides."""
    from madcache.experiments.sweep import load_sweep

    directory = f"DEMO_DIR={Path(paths.out).resolve()}"
    chosen = [f"shots=[{shots}]"] if shots is not None else []
    return load_sweep(config.pipeline, [directory, *chosen, *config.overrides])


def make_report(
    paths: DemoPaths,
    regime: Mapping[str, Any] | None = None,
    student: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sweep's report, preceded by what was checked before any method ran: the demo
    student's pretraining, the regime's preconditions (written as report/regime.md) and, given
    the sweep's `[train]` settings, whether its runs were trained to convergence."""
    from madcache.core.io import atomic_write_text
    from madcache.demo.regime import regime_markdown
    from madcache.experiments.report import build_report

    report = build_report(paths.runs, out=paths.report)
    sections = []
    if student is not None:
        sections.append(student_markdown(student))
    if regime is not None:
        sections.append(
            "## Preconditions (dev split, baseline and teacher alone)\n\n" + regime_markdown(regime)
        )
    if train is not None and train.get("select", "last") != "best":
        sections.append(recipe_markdown(train))
    if sections:
        atomic_write_text(paths.report / "regime.md", "\n".join(sections))
        report = {**report, "markdown": "\n".join([*sections, report["markdown"]])}
    return report


def recipe_markdown(train: Mapping[str, Any]) -> str:
    """The timed demo's caveat: its runs stop at `max_steps` without early stopping, which on
    the demo world leaves some seeds on the loss plateau (issue 33); the converged comparison
    is `madcache demo study`."""
    return (
        f"## Recipe: not trained to convergence\n\n"
        f"Every run stops after {train.get('max_steps')} task steps and keeps its last weights "
        "(no early stopping), to fit the demo's time budget. On the demo world that leaves some "
        "seeds on the loss plateau, so the comparison below cannot decide between methods. "
        "The converged comparison (600 steps, the best dev step's weights, seeds until the SM "
        "interval is ±5 points) is `madcache demo study` (docs/demo-study.md).\n"
    )


def student_markdown(summary: Mapping[str, Any]) -> str:
    """The demo student's pretraining: held-out MLM and ITM loss before and after."""
    first, last = summary["curve"][0], summary["curve"][-1]
    return (
        f"## Demo student: VL-pretrained on the captions (MLM + ITM)\n\n"
        f"{summary['steps']} steps of batch {summary['batch_size']} on "
        f"{summary['captions']} captions ({summary['parameters']:,} parameters, "
        f"{summary['seconds']} s). Held-out captions ({summary['held_out_captions']}): "
        f"MLM loss {first['mlm']:.3f} -> {last['mlm']:.3f}; ITM loss {first['itm']:.3f} "
        f"-> {last['itm']:.3f} (chance ln 2 = 0.693).\n"
    )
