"""The demo's training settings, chosen on the baseline alone (`madcache demo search`).

A dev split is held out of the demo world's *train* split (`dev_fraction` of its images, with all
their questions, so no image is on both sides) and written as its own dataset root: `train.jsonl`
(the rest) and `val.jsonl` (the dev questions), images hard-linked. Each point of the grid in
search.toml is a baseline sweep over shots x seeds on that root, validated on the dev split every
`eval_every` steps. The point with the best mean final dev Q2A among those within the spec's
`[budget]` (the demo's CPU time) wins; val, the SM split and every other method stay unseen. Outputs under `<out>/search/`: search.json, search.md and
curves.png (train loss and dev Q2A per step, one line per point and shot size).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.core import io
from madcache.core.config import read_toml
from madcache.core.errors import ConfigError

SEARCH_FILE = Path(__file__).with_name("search.toml")
METRIC = "q2a"
BASELINE = "baseline"


def load_search(path: str | Path = SEARCH_FILE) -> dict[str, Any]:
    """The search spec: shots, seeds, dev_fraction, eval_every and the `[grid]` of settings."""
    path = Path(path)
    spec = read_toml(path, what="search spec")
    for key in ("shots", "seeds", "dev_fraction", "eval_every", "grid"):
        if key not in spec:
            raise ConfigError(f"{path}: missing key '{key}'")
    if not 0 < spec["dev_fraction"] < 1:
        raise ConfigError(f"{path}: dev_fraction must be in (0, 1), got {spec['dev_fraction']}")
    for key, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
    return spec


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the file's order."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(point: Mapping[str, Any]) -> str:
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in point.items())


def make_dev_root(source: Path, out: Path, *, fraction: float, seed: int = 0) -> dict[str, int]:
    """Write `out/train.jsonl` and `out/val.jsonl` from `source/train.jsonl`, holding out
    `fraction` of the images (drawn with `seed`); images are hard-linked (copied where the file
    system cannot link). Returns the question counts. Idempotent: an existing root is kept."""
    done = out / "split.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    lines = (source / "train.jsonl").read_text(encoding="utf-8").splitlines()
    image_of_line = [json.loads(line)["img_id"] for line in lines]
    images = sorted(set(image_of_line))
    random.Random(seed).shuffle(images)
    dev = set(images[: max(1, round(len(images) * fraction))])
    kept = [line for line, image in zip(lines, image_of_line) if image not in dev]
    held = [line for line, image in zip(lines, image_of_line) if image in dev]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "vcr1images").exists():
        shutil.copytree(source / "vcr1images", out / "vcr1images", copy_function=_link_or_copy)
    io.atomic_write_text(out / "train.jsonl", "".join(f"{line}\n" for line in kept))
    io.atomic_write_text(out / "val.jsonl", "".join(f"{line}\n" for line in held))
    counts = {"train": len(kept), "dev": len(held), "dev_images": len(dev)}
    io.write_json(done, counts)
    return counts


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def resolved_base(pipeline) -> dict[str, Any]:
    """The demo pipeline's dataset, students and `[train]` table as plain values (placeholders
    substituted), for the dev-split baseline sweeps of the regime check and the search."""
    return {
        "dataset": pipeline.dataset,
        "train": dict(pipeline.train),
        "students": [
            {"name": s.name, "options": dict(s.options), "label": s.label}
            for s in pipeline.students
        ],
    }


def point_pipeline(
    base: Mapping[str, Any],
    point: Mapping[str, Any],
    spec: Mapping[str, Any],
    *,
    root: Path,
    regions: Path,
    out: Path,
) -> dict[str, Any]:
    """One grid point as a baseline-only pipeline on the dev root: the demo's `[train]` table
    with the point's values, validated every `eval_every` steps."""
    train = {**base["train"], **point, "eval_every": spec["eval_every"]}
    return {
        "dataset": base["dataset"],
        "root": str(root),
        "out": str(out),
        "regions": str(regions),
        "methods": [BASELINE],
        "shots": spec["shots"],
        "seeds": spec["seeds"],
        "students": base.get("students", ["single-stream"]),
        "eval": ["val"],
        "zero_shot": False,
        "train": train,
    }


def run_search(
    demo_out: Path,
    *,
    pipeline: Path,
    spec: Mapping[str, Any],
    jobs: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or finish) every grid point's baseline sweep on the dev split; write and return the
    summary. Needs the demo world and region store (`madcache demo run` makes them)."""
    from madcache.experiments.sweep import from_dict, run_sweep

    demo_out = Path(demo_out).resolve()  # the sweep takes relative paths from its folder
    world = demo_out / "world" / "vcr"
    regions = demo_out / "regions"
    for needed in (world / "train.jsonl", regions):
        if not needed.exists():
            raise ConfigError(
                f"{needed} is missing: run `madcache demo run --out {demo_out}` "
                "first (the search needs its world and region store)"
            )
    search_dir = demo_out / "search"
    root = search_dir / "dev" / "vcr"
    counts = make_dev_root(world, root, fraction=spec["dev_fraction"])
    log(
        f"[search] dev split: {counts['dev']} questions ({counts['dev_images']} images) held "
        f"out of train; {counts['train']} left to sample from"
    )
    from madcache.experiments.sweep import load_sweep

    base = resolved_base(load_sweep(pipeline, [f"DEMO_DIR={demo_out.resolve()}"]))
    results = []
    for point in grid_points(spec["grid"]):
        name = point_name(point)
        data = point_pipeline(
            base, point, spec, root=root, regions=regions, out=search_dir / "runs" / name
        )
        log(f"[search] {name}")
        sweep = run_sweep(from_dict(data, base=search_dir), jobs=jobs, progress=progress)
        if sweep.failed:
            raise ConfigError(
                f"search point {name}: {len(sweep.failed)} run(s) failed; see "
                f"{sweep.failed[0][0].run_dir}/sweep.log"
            )
        results.append(point_result(name, point, [s.run_dir for s in sweep.planned]))
    summary = summarise(results, spec)
    io.write_json(search_dir / "search.json", summary)
    io.atomic_write_text(search_dir / "search.md", search_markdown(summary))
    plot_curves(results, search_dir / "curves.png")
    return summary


def point_result(name: str, point: Mapping[str, Any], run_dirs: Sequence[Path]) -> dict[str, Any]:
    """Final dev Q2A per (shots, seed) and the mean learning curve per shot size."""
    runs = []
    for run_dir in run_dirs:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
        curve = [
            (h["step"], h["loss"], h.get("eval", {}).get(METRIC))
            for h in metrics["history"]
            if h["stage"] == "task"
        ]
        runs.append(
            {
                "shots": metrics["shots"],
                "seed": metrics["seed"],
                "final": metrics["eval"]["val"][METRIC],
                "curve": curve,
            }
        )
    return {
        "name": name,
        "point": dict(point),
        "runs": runs,
        "mean": sum(r["final"] for r in runs) / len(runs),
    }


def within_budget(point: Mapping[str, Any], budget: Mapping[str, Any]) -> bool:
    return all(point.get(key, limit) <= limit for key, limit in budget.items())


def summarise(results: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Rank the points within the budget by mean final dev Q2A; ties go to the cheaper point
    (fewer steps)."""
    budget = spec.get("budget", {})
    allowed = [r for r in results if within_budget(r["point"], budget)]
    if not allowed:
        raise ConfigError(f"no grid point is within the search budget {budget}")
    ranked = sorted(allowed, key=lambda r: (-round(r["mean"], 6), r["point"].get("max_steps", 0)))
    return {
        "metric": METRIC,
        "split": "dev (held out of train)",
        "shots": spec["shots"],
        "seeds": spec["seeds"],
        "eval_every": spec["eval_every"],
        "budget": dict(budget),
        "chosen": dict(ranked[0]["point"]),
        "points": [{**r, "within_budget": within_budget(r["point"], budget)} for r in results],
    }


def search_markdown(summary: Mapping[str, Any]) -> str:
    shots = summary["shots"]
    lines = [
        f"Baseline dev {METRIC} (final, mean over seeds {summary['seeds']}); budget "
        f"{summary.get('budget', {})}; chosen: {point_name(summary['chosen'])}",
        "",
        "| point | " + " | ".join(f"k{k}" for k in shots) + " | mean | within budget |",
        "|---" * (len(shots) + 3) + "|",
    ]
    for result in summary["points"]:
        cells = []
        for k in shots:
            values = [r["final"] for r in result["runs"] if r["shots"] == k]
            cells.append(f"{sum(values) / len(values):.2f}")
        inside = "yes" if result.get("within_budget", True) else "no"
        lines.append(
            f"| {result['name']} | " + " | ".join(cells) + f" | {result['mean']:.2f} | {inside} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Train loss and dev Q2A against the step, mean over seeds, per point and shot size."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        for k in sorted({r["shots"] for r in result["runs"]}):
            curves = [r["curve"] for r in result["runs"] if r["shots"] == k]
            steps = [step for step, _, _ in curves[0]]
            loss = [sum(c[i][1] for c in curves) / len(curves) for i in range(len(steps))]
            acc = [sum(c[i][2] for c in curves) / len(curves) for i in range(len(steps))]
            label = f"{result['name']} k{k}"
            loss_ax.plot(steps, loss, marker=".", label=label)
            acc_ax.plot(steps, acc, marker=".", label=label)
    loss_ax.set(
        xlabel="step", ylabel="train loss (mean since last point)", title="baseline: train loss"
    )
    acc_ax.set(xlabel="step", ylabel=f"dev {METRIC} (%)", title=f"baseline: dev {METRIC}")
    acc_ax.axhline(25.0, color="grey", linestyle=":", label="chance")
    acc_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
