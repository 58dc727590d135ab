"""Evaluating a trained run: score its saved student on a split (optionally shortcut-mitigated)
and record the result in the run's metrics.json (docs/architecture.md, "Trainer -> report").

Metric names: VCR `q2a`, `qa2r`, `q2ar`; SNLI-VE `accuracy`; VQA `vqa_accuracy`; all in percent
(`madcache.data.metrics`, the one implementation).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from madcache.core.device import resolve_device
from madcache.core.io import check_output_location, read_json, write_json
from madcache.data import DATASETS
from madcache.data.metrics import score_logits, without_counts
from madcache.students.predict import load_run_student, predict_logits
from madcache.students.visual import loader_for
from madcache.train.rundir import METRICS, load_run
from madcache.train.setup import load_eval_examples


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str,
    sm: bool = False,
    root: str | Path | None = None,
    regions: str | Path | None = None,
) -> dict[str, float]:
    """Score a run's saved student on `split` (SM-transformed when `sm`) and record the result in
    metrics.json["eval"][split or f"{split}_sm"]. `root` overrides the run's dataset root,
    `regions` its region store (default: the run's eval-split store for its eval split)."""
    run_dir = Path(run_dir)
    config = load_run(run_dir)
    check_output_location(run_dir / METRICS, roots=[root or config.root], option="--run")
    if sm:
        DATASETS.get(config.dataset).check_sm()
    if root is not None:
        config.root = str(root)
    if regions is None:
        regions = (config.eval_regions if split == config.eval_split else None) or config.regions
    examples = load_eval_examples(config, split, sm=sm)
    config.device = resolve_device(config.device, option="the run's device")  # auto -> here
    student = load_run_student(run_dir, device=config.device)
    logits = predict_logits(
        student,
        examples,
        regions=loader_for(student, root=config.root, regions=regions),
        batch_size=config.batch_size,
        device=config.device,
    )
    result = without_counts(
        score_logits(config.dataset, examples, logits, getattr(student, "answers", None))
    )
    record_eval(run_dir, f"{split}_sm" if sm else split, result)
    return result


def record_eval(run_dir: Path, key: str, result: Mapping[str, float]) -> None:
    """Write `result` under metrics.json["eval"][key], keeping everything else."""
    path = run_dir / "metrics.json"
    metrics = (
        read_json(path, hint="restore it or delete it (the evaluation rewrites it)")
        if path.exists()
        else {}
    )
    metrics.setdefault("eval", {})[key] = dict(result)
    write_json(path, metrics)
