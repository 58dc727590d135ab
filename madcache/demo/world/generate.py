"""`generate_demo_world`: every demo dataset in its original format, under one folder.

Markers make reruns cheap and safe: `IN_PROGRESS` is written first and `DONE` (the summary)
last. A folder with `DONE` for the same settings is left alone; one with `IN_PROGRESS` but no
`DONE` is a broken earlier run and is regenerated; anything else that already holds one of the
dataset folders is refused, so real data is never overwritten.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from madcache.core.config import changed_settings
from madcache.core.errors import ConfigError
from madcache.core.io import read_json
from madcache.demo.world import captions_files, snli_ve_files, vcr_files, vqa_files

GENERATOR_VERSION = 3
DONE = "DONE"
IN_PROGRESS = "IN_PROGRESS"
DATASET_DIRS = ("vcr", "snli-ve", "vqa", "captions")

# questions (VCR, VQA), images (SNLI-VE: three hypotheses each; captions)
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "vcr": {"train": 120, "val": 36, "test": 24},
        "snli-ve": {"train": 30, "dev": 12, "test": 12},
        "vqa": {"train": 100, "val": 40},
        "captions": {"images": 80, "per_image": 5},
    },
    "default": {
        "vcr": {"train": 2000, "val": 500, "test": 300},
        "snli-ve": {"train": 500, "dev": 134, "test": 134},
        "vqa": {"train": 1500, "val": 400},
        "captions": {"images": 3000, "per_image": 5},
    },
}
DATASET_SEEDS = {"vcr": 1, "snli-ve": 2, "vqa": 3, "captions": 4}
SPLIT_SEEDS = {"train": 1, "val": 2, "dev": 2, "test": 3, "all": 4}


def _rng(seed: int, dataset: str, split: str) -> np.random.Generator:
    """One generator per (dataset, split): changing one size leaves the other files as they
    were."""
    return np.random.default_rng([seed, DATASET_SEEDS[dataset], SPLIT_SEEDS[split]])


def _settings(size: str, seed: int) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "size": size, "seed": seed}


def _image_count(plan: dict[str, Any]) -> int:
    return (
        sum(vcr_files.images_for(n) for n in plan["vcr"].values())
        + sum(plan["snli-ve"].values())
        + sum(vqa_files.images_for(n) for n in plan["vqa"].values())
        + plan["captions"]["images"]
    )


def _prepare(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The existing summary when `out` is complete for `settings`; None when generation may
    start (after removing a broken earlier run's files)."""
    done = out / DONE
    if done.is_file():
        summary = read_json(
            done, error=ConfigError, hint=f"delete {out} and generate the world again"
        )
        if not changed_settings(summary, settings):
            return summary
        raise ConfigError(
            f"{out} already holds a demo world with size={summary.get('size')!r}, "
            f"seed={summary.get('seed')!r} (generator version {summary.get('generator_version')})"
            f"; choose another --out or delete {out} to regenerate it"
        )
    if (out / IN_PROGRESS).is_file():
        for name in DATASET_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        return None
    clashing = [name for name in DATASET_DIRS if (out / name).exists()]
    if clashing:
        raise ConfigError(
            f"{out} already holds {', '.join(clashing)} that the demo world did not write "
            "(no DONE or IN_PROGRESS marker); choose an empty --out folder"
        )
    return None


def generate_demo_world(
    out: str | Path, *, size: str = "default", seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Generate the demo world under `out` (see docs/demo-world.md) and return its summary.

    Deterministic: the same `size` and `seed` give byte-identical files. Rerunning on a complete
    folder does nothing and returns the stored summary (with `"skipped": True`).
    """
    if size not in SIZES:
        raise ConfigError(f"unknown demo world size {size!r}; valid sizes: {', '.join(SIZES)}")
    out = Path(out)
    settings = _settings(size, seed)
    existing = _prepare(out, settings) if out.exists() else None
    if existing is not None:
        return {**existing, "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / IN_PROGRESS).write_text(json.dumps(settings) + "\n", encoding="utf-8")
    plan = SIZES[size]
    started = time.perf_counter()
    with _progress_bar(progress, _image_count(plan)) as bar:
        counts = _write_all(out, plan, seed, bar.update if bar is not None else _no_tick)
    summary = {**settings, "counts": counts, "seconds": round(time.perf_counter() - started, 2)}
    (out / DONE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / IN_PROGRESS).unlink()
    return {**summary, "skipped": False}


def _write_all(out: Path, plan: dict[str, Any], seed: int, tick) -> dict[str, Any]:
    counts: dict[str, Any] = {"vcr": {}, "snli-ve": {}, "vqa": {}}
    for split, n in plan["vcr"].items():
        counts["vcr"][split] = vcr_files.write_vcr_split(
            out, split, n, _rng(seed, "vcr", split), tick
        )
    for split, n in plan["snli-ve"].items():
        counts["snli-ve"][split] = snli_ve_files.write_snli_ve_split(
            out, split, n, _rng(seed, "snli-ve", split), tick
        )
    answers: set[str] = set()
    for split, n in plan["vqa"].items():
        written = vqa_files.write_vqa_split(out, split, n, _rng(seed, "vqa", split), tick)
        used = written.pop("answers")
        if split == "train":  # the vocabulary never learns from held-out answers
            answers |= used
        counts["vqa"][split] = written
    counts["vqa"]["answer_vocabulary"] = vqa_files.write_answer_vocabulary(out, answers)
    caption_plan = plan["captions"]
    counts["captions"] = captions_files.write_captions(
        out, caption_plan["images"], caption_plan["per_image"], _rng(seed, "captions", "all"), tick
    )
    return counts


def _no_tick(n: int = 1) -> None:
    return None


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="image", desc="demo world")
