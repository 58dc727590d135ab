"""`madcache demo study`: baseline, MD and MAD trained to convergence on the demo world, with
as many seeds as the SM comparison needs (issue 33).

Everything is chosen on the baseline alone and on a dev split held out of train (the regime
check's: `dev_fraction` of the train images with all their questions); val and SM are
evaluated once, with the weights each run selected on dev:

1. **recipe**: a baseline sweep per learning rate in `lrs` (`steps` steps, `recipe_seeds`, k =
   `recipe_shots`) with early stopping on dev (`select = "best"`, validated every `eval_every`
   steps): the lr with the best mean selected dev Q2A wins (a tie: the first listed);
2. **regime at convergence**: the regime check (madcache/demo/regime.py) with that recipe, largest
   shot size first: the largest whose converged baseline stays `margin` points below the
   teacher's zero-shot dev Q2A, else the smallest, and the report says so;
3. **study**: baseline, MD, MAD x seeds at that shot size on a root whose training split is
   train minus dev (`train.jsonl`), with `dev.jsonl` the eval split that selects the step and
   val / SM evaluated with the selected weights. It starts with `seeds` seeds; while the larger
   paired SM standard deviation (MD or MAD minus the baseline) needs more for a t half-width of
   `half_width` points (`seeds_for_half_width`), it adds them, up to `max_seeds`;
4. **inputs probe**: whether the student's region features can express the teacher's image
   features at all (`inputs_probe`);
5. **report**: `<out>/study/study.md` (docs/demo-study.md is a copy with its reading).

Every stage keeps what it finished (sweeps skip complete runs, runs resume from their
checkpoints), so a rerun after a kill only does what is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madcache.core import io
from madcache.core.config import check_ranges, config_from_dict, setting
from madcache.core.errors import ConfigError
from madcache.demo.run import REGIME, DemoConfig, DemoPaths

METRIC = "q2a"
DEV = "dev.jsonl"  # the study root's dev split (a .jsonl split name under the root)
SM = "val_sm"
METHODS = ("baseline", "md", "mad")


@dataclass(frozen=True)
class StudyConfig:
    out: Path = setting(
        Path("demo"),
        help="The demo folder (`madcache demo run` makes its "
        "world, models, caches and regions; missing ones "
        "are made here). Results go to OUT/study.",
    )
    lrs: list[float] = setting(
        factory=lambda: [1e-3, 5e-4],
        help="A learning rate the recipe is chosen from (repeatable; "
        "baseline only, dev early stopping).",
    )
    steps: int = setting(
        600,
        minimum=1,
        help="Task steps of every run (the schedule's length; the selected step may be earlier).",
    )
    eval_every: int = setting(
        100,
        minimum=1,
        help="Task steps between dev validations (the candidate steps of early stopping).",
    )
    recipe_shots: int = setting(32, minimum=1, help="Questions per category of the recipe runs.")
    recipe_seeds: int = setting(2, minimum=1, help="Seeds per learning rate in the recipe choice.")
    seeds: int = setting(4, minimum=2, help="Seeds of each method to start with.")
    max_seeds: int = setting(12, minimum=2, help="At most this many seeds per method.")
    half_width: float = setting(
        5.0,
        above=0,
        help="Target 95% half-width (points) of the paired SM differences to the baseline.",
    )
    regime: Path = setting(
        REGIME, help="The regime check's spec (shots tried, seeds, margin, dev fraction)."
    )
    overrides: list[str] = setting(
        factory=list,
        flag="set",
        metavar="KEY=VALUE",
        help="A setting of the demo pipeline (repeatable; e.g. "
        "train.af_max_steps=2); the study's own (steps, lr, "
        "selection, shots, seeds, evals) win.",
    )
    jobs: int = setting(2, minimum=1, help="Training runs at once.")
    threads: int = setting(
        1,
        minimum=1,
        help="torch threads of the demo's own stages (world, "
        "teacher, student, caches) when they are made.",
    )
    progress: bool = setting(True, help="Show progress bars.")

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.lrs:
            raise ConfigError("lrs: give at least one learning rate")
        if self.max_seeds < self.seeds:
            raise ConfigError(f"max_seeds: must be >= seeds ({self.seeds}), got {self.max_seeds}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StudyConfig:
        return config_from_dict(cls, values, noun="demo study option")


def run_study(config: StudyConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) the stages of the module docstring; returns the summary that
    `study.json` holds."""
    from madcache.demo.regime import load_regime
    from madcache.demo.run import load_pipeline
    from madcache.demo.search import make_dev_root, resolved_base

    started = time.perf_counter()
    paths = DemoPaths(Path(config.out).resolve())
    demo = DemoConfig(
        out=paths.out,
        threads=config.threads,
        progress=config.progress,
        overrides=tuple(config.overrides),
    )
    prepare(paths, demo, log)
    study_dir = paths.out / "study"
    spec = load_regime(config.regime)
    counts = make_dev_root(
        paths.world / "vcr", paths.out / "search" / "dev" / "vcr", fraction=spec["dev_fraction"]
    )
    base = resolved_base(load_pipeline(paths, demo))
    recipe = choose_recipe(paths, base, config, log)
    train = {**base["train"], **recipe["chosen"], **converged(config)}
    regime = check_converged_regime(
        paths, demo, {**base, "train": train}, spec, config, recipe, log
    )
    probe = once(study_dir / "inputs_probe.json", lambda: inputs_probe(paths))
    root = make_study_root(paths)
    runs = study_runs(paths, root, {**base, "train": train}, regime["shots"], config, log)
    summary = {
        "dev_questions": counts["dev"],
        "recipe": recipe,
        "regime": regime,
        "inputs_probe": probe,
        "half_width": config.half_width,
        **runs,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    io.write_json(study_dir / "study.json", summary)
    io.atomic_write_text(study_dir / "study.md", study_markdown(summary))
    return summary


def inputs_probe(paths: DemoPaths) -> dict[str, Any]:
    """Can the student see what the teacher sees? `input_probe` (train/transfer.py) from the
    region features and boxes of each image to the teacher's image target V_t: fitted on the
    train images, scored on the val images (one row per image)."""
    import numpy as np
    import torch

    from madcache.cache.reader import open_cache
    from madcache.data import read_examples
    from madcache.students.regions import region_loader
    from madcache.train.transfer import input_probe, region_vectors

    chosen, targets = {}, {}
    for split in ("train", "val"):
        first: dict[str, Any] = {}
        for ex in read_examples("vcr", paths.world / "vcr", split).examples:
            first.setdefault(ex.image_id, ex)
        chosen[split] = list(first.values())
        image = (
            open_cache(paths.cache(split))
            .load_targets([ex.id for ex in chosen[split]], needs=("image",))
            .image
        )
        targets[split] = torch.from_numpy(np.asarray(image, dtype=np.float32))
    # one batch, so both splits are padded to the same number of regions
    vectors = region_vectors(region_loader(str(paths.regions))(chosen["train"] + chosen["val"]))
    n = len(chosen["train"])
    return input_probe(vectors[:n], targets["train"], vectors[n:], targets["val"])


def once(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON at `path`, computed and written the first time."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    io.write_json(path, result)
    return result


def converged(config: StudyConfig) -> dict[str, Any]:
    """The `[train]` settings of converged training: `steps` steps, the best dev step's
    weights."""
    return {
        "max_steps": config.steps,
        "select": "best",
        "select_metric": METRIC,
        "eval_every": config.eval_every,
    }


def prepare(paths: DemoPaths, demo: DemoConfig, log: Callable[[str], None]) -> None:
    """The demo's inputs (world, teacher and student, caches, regions), each made if missing."""
    from madcache.demo.run import (
        make_cache,
        make_regions,
        make_student,
        make_teacher,
        make_world,
        side_by_side,
    )

    if not (paths.world / "vcr" / "train.jsonl").is_file():
        log("[study] world ...")
        make_world(paths, demo)
    calls = [
        call
        for call, done in (
            ((make_teacher, paths, demo), paths.teacher.is_file()),
            ((make_student, paths, demo), (paths.student / "student.json").is_file()),
        )
        if not done
    ]
    if calls:
        log("[study] teacher / student ...")
        side_by_side(*calls)
    for split in ("train", "val"):
        if not (paths.cache(split) / "manifest.json").is_file():
            log(f"[study] {split} cache ...")
            make_cache(paths, demo, split)
    if not (paths.regions / "manifest.json").is_file():
        make_regions(paths, demo)


def choose_recipe(
    paths: DemoPaths, base: Mapping[str, Any], config: StudyConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """Baseline runs per lr on the dev root with dev early stopping; the best mean selected
    dev Q2A wins."""
    from madcache.demo.search import point_pipeline
    from madcache.experiments.sweep import from_dict, run_sweep

    study_dir = paths.out / "study"
    points = []
    for lr in config.lrs:
        name = f"lr{lr:g}-steps{config.steps}"
        spec = {
            "shots": [config.recipe_shots],
            "seeds": list(range(config.recipe_seeds)),
            "eval_every": config.eval_every,
        }
        data = point_pipeline(
            {**base, "train": {**base["train"], **converged(config)}},
            {"lr": lr},
            spec,
            root=paths.out / "search" / "dev" / "vcr",
            regions=paths.regions,
            out=study_dir / "recipe" / name / "runs",
        )
        sweep = run_sweep(
            from_dict(data, base=study_dir), jobs=config.jobs, progress=config.progress
        )
        if sweep.failed:
            raise ConfigError(
                f"demo study: recipe {name}: a baseline run failed; see "
                f"{sweep.failed[0][0].run_dir}/sweep.log"
            )
        runs = [selected(s.run_dir) for s in sweep.planned]
        mean = sum(r["dev"] for r in runs) / len(runs)
        points.append(
            {
                "name": name,
                "lr": lr,
                "runs": runs,
                "mean": mean,
                "folder": str(study_dir / "recipe" / name),
            }
        )
        log(
            f"[study] recipe {name}: baseline dev Q2A {mean:.2f} at steps "
            f"{[r['step'] for r in runs]}"
        )
    best = max(points, key=lambda p: (round(p["mean"], 6), -config.lrs.index(p["lr"])))
    return {
        "shots": config.recipe_shots,
        "seeds": list(range(config.recipe_seeds)),
        "points": points,
        "chosen": {"lr": best["lr"]},
        "chosen_runs": best["folder"],
    }


def selected(run_dir: Path) -> dict[str, Any]:
    """A run's selection: seed, the chosen step, its dev score, and val / SM where evaluated."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    selection = metrics["selection"]
    out = {
        "seed": metrics["seed"],
        "step": selection["step"],
        "dev": selection["score"],
        "curve": selection["curve"],
    }
    for split in ("val", SM):
        if split in metrics["eval"]:
            out[split] = metrics["eval"][split][METRIC]
    return out


def check_converged_regime(
    paths: DemoPaths,
    demo: DemoConfig,
    base: Mapping[str, Any],
    spec: Mapping[str, Any],
    config: StudyConfig,
    recipe: Mapping[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The regime check with the converged recipe, in the chosen recipe's folder: its runs at
    the recipe's shot size and seeds are the recipe's own (complete, so not run again)."""
    from madcache.demo.regime import check_regime
    from madcache.demo.run import load_pipeline

    return check_regime(
        paths.out,
        pipeline=load_pipeline(paths, demo),
        base=base,
        cache=paths.cache("train"),
        spec=spec,
        jobs=config.jobs,
        progress=config.progress,
        log=log,
        directory=Path(recipe["chosen_runs"]),
        eval_every=config.eval_every,
    )


def make_study_root(paths: DemoPaths) -> Path:
    """`study/root/vcr`: the world's train.jsonl (the file the teacher cache was extracted from,
    which its fingerprint checks) and val.jsonl, and dev.jsonl = the regime's dev questions;
    images linked. The low-shot samples exclude dev (`write_splits`)."""
    from madcache.demo.search import _link_or_copy

    dev_root = paths.out / "search" / "dev" / "vcr"
    root = paths.out / "study" / "root" / "vcr"
    if (root / "val.jsonl").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    for source, name in (
        (paths.world / "vcr" / "train.jsonl", "train.jsonl"),
        (dev_root / "val.jsonl", DEV),
        (paths.world / "vcr" / "val.jsonl", "val.jsonl"),
    ):
        io.atomic_write_text(root / name, source.read_text(encoding="utf-8"))
    if not (root / "vcr1images").exists():
        import shutil

        shutil.copytree(
            dev_root / "vcr1images",
            root / "vcr1images",
            copy_function=_link_or_copy,
            dirs_exist_ok=True,
        )
    return root


def study_pipeline(
    paths: DemoPaths, root: Path, base: Mapping[str, Any], shots: int, seeds: int
) -> dict[str, Any]:
    """Baseline, MD, MAD x seeds at `shots`, selected on dev, evaluated on val and SM."""
    return {
        "dataset": base["dataset"],
        "root": str(root),
        "out": str(paths.out / "study" / "runs"),
        "regions": str(paths.regions),
        "cache": str(paths.cache("train")),
        "eval_caches": {"val": str(paths.cache("val"))},
        "methods": list(METHODS),
        "shots": [shots],
        "seeds": list(range(seeds)),
        "students": base["students"],
        "eval": [DEV, "val", SM],
        "zero_shot": True,
        "train": dict(base["train"]),
    }


def study_runs(
    paths: DemoPaths,
    root: Path,
    base: Mapping[str, Any],
    shots: int,
    config: StudyConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The sweep, grown to the seeds the SM paired spread needs (at most `max_seeds`)."""
    from madcache.experiments.sweep import from_dict, run_sweep

    seeds, rounds = config.seeds, []
    while True:
        pipeline = from_dict(
            study_pipeline(paths, root, base, shots, seeds), base=paths.out / "study"
        )
        write_splits(paths, pipeline)
        sweep = run_sweep(pipeline, jobs=config.jobs, progress=config.progress)
        if sweep.failed:
            raise ConfigError(
                f"demo study: {len(sweep.failed)} run(s) failed; see "
                f"{sweep.failed[0][0].run_dir}/sweep.log"
            )
        runs = {
            method: {
                r["seed"]: r
                for r in (selected(s.run_dir) for s in sweep.planned if s.method == method)
            }
            for method in METHODS
        }
        needed = seeds_needed(runs, config.half_width)
        rounds.append({"seeds": seeds, "needed": needed})
        log(
            f"[study] {seeds} seeds: the SM paired spread needs {needed['seeds']} for "
            f"±{config.half_width:g} (paired sd {needed['sd']})"
        )
        if needed["seeds"] <= seeds or seeds >= config.max_seeds:
            break
        seeds = min(needed["seeds"], config.max_seeds)
    report = make_study_report(paths)
    return {
        "shots": shots,
        "seeds": seeds,
        "rounds": rounds,
        "runs": runs,
        "report": report["markdown"],
    }


def write_splits(paths: DemoPaths, pipeline: Any) -> None:
    """Each run's low-shot sample, drawn from train minus dev (the regime's dev root) by the
    sampler the sweep uses, written where the sweep looks for it first (so it draws none
    itself): the same sample the recipe and regime runs of that (k, seed) trained on, and no
    dev question among them. MAD's adaptive finetuning still reads the whole train split,
    label-free, dev questions included (the cache was extracted for that file)."""
    from madcache.data import lowshot, read_examples
    from madcache.experiments.sweep import ensure_splits, plan

    examples: list[Any] = []

    def make(k: int, seed: int):
        if not examples:
            examples.extend(
                read_examples("vcr", paths.out / "search" / "dev" / "vcr", "train").examples
            )
        return lowshot.sample_per_category(examples, k=k, seed=seed)

    ensure_splits(pipeline, plan(pipeline), make)


def seeds_needed(
    runs: Mapping[str, Mapping[int, Mapping[str, Any]]], half_width: float
) -> dict[str, Any]:
    """Seeds for a ±`half_width` t interval of the paired SM difference of MD and of MAD to
    the baseline, at their observed paired sd (the larger need)."""
    from madcache.experiments.stats import sample_std, seeds_for_half_width

    sds = {}
    for method in METHODS[1:]:
        common = sorted(set(runs[method]) & set(runs["baseline"]))
        sds[method] = sample_std([runs[method][s][SM] - runs["baseline"][s][SM] for s in common])
    need = max(seeds_for_half_width(sd, half_width=half_width) for sd in sds.values())
    return {"seeds": need, "sd": {m: round(sd, 3) for m, sd in sds.items()}}


def make_study_report(paths: DemoPaths) -> dict[str, Any]:
    from madcache.experiments.report import build_report

    return build_report(paths.out / "study" / "runs", out=paths.out / "study" / "report")


def study_markdown(summary: Mapping[str, Any]) -> str:
    """study.md: how the recipe and the shot size were chosen, the chosen step of every run,
    the seeds, then the sweep's report (val / SM tables with paired intervals and power)."""
    from madcache.demo.regime import regime_markdown

    recipe, regime = summary["recipe"], summary["regime"]
    lines = [
        "## 1. Recipe (baseline only, dev early stopping)",
        "",
        f"k = {recipe['shots']}, seeds {recipe['seeds']}; dev = "
        f"{summary['dev_questions']} questions held out of train.",
        "",
        "| point | selected step per seed | selected dev Q2A per seed | mean |",
        "|---|---|---|---|",
    ]
    for point in recipe["points"]:
        steps = ", ".join(str(r["step"]) for r in point["runs"])
        scores = ", ".join(f"{r['dev']:.1f}" for r in point["runs"])
        lines.append(f"| {point['name']} | {steps} | {scores} | {point['mean']:.2f} |")
    lines += [
        "",
        f"Chosen: lr {recipe['chosen']['lr']:g}.",
        "",
        "## 2. Regime at convergence (dev, baseline and teacher alone)",
        "",
        regime_markdown(regime),
        "## 3. Runs: the step each selected on dev",
        "",
        "| method | seed | step | dev Q2A | val Q2A | SM Q2A |",
        "|---|---|---|---|---|---|",
    ]
    for method, by_seed in summary["runs"].items():
        for seed in sorted(by_seed):
            r = by_seed[seed]
            lines.append(
                f"| {method} | {seed} | {r['step']} | {r['dev']:.1f} | "
                f"{r.get('val', float('nan')):.1f} | {r.get(SM, float('nan')):.1f} |"
            )
    lines += [
        "",
        "Seeds: "
        + "; ".join(
            f"{r['seeds']} seeds -> the SM paired sd {r['needed']['sd']} needs {r['needed']['seeds']}"
            for r in summary["rounds"]
        )
        + f" (target ±{summary.get('half_width', 5):g}).",
        "",
        f"Wall time of this call: {summary['wall_s']:.0f} s.",
        "",
        "## 4. Can the student see what the teacher sees?",
        "",
        probe_markdown(summary["inputs_probe"]),
        "## 5. Report (val and SM with each run's selected step)",
        "",
        summary["report"],
    ]
    return "\n".join(lines) + "\n"


def probe_markdown(probe: Mapping[str, Any]) -> str:
    return (
        f"A ridge regression from each image's region features and boxes to the teacher's "
        f"image features V_t, fitted on {probe['train_rows']} train images and scored on "
        f"{probe['eval_rows']} val images: centred cosine **{probe['centred_cosine']:.3f}**, "
        f"R^2 **{probe['r2']:.3f}** (the train targets' mean alone: R^2 "
        f"{probe['mean_only_r2']:.3f}; ridge {probe['ridge']:g} x rows, inputs "
        "standardised).\n"
    )
