"""Metrics and the evaluation of a trained run (docs/architecture.md, "Trainer -> report").

Metric names: VCR `q2a`, `qa2r`, `q2ar`; SNLI-VE `accuracy`; VQA `vqa_accuracy`; all in percent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from madcache.data.records import Example


def vcr_metrics(examples: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
    """Q2A and QA2R accuracy, and Q2AR: a question counts only if both its `:qa` and `:qar`
    predictions are right (joined by `Example.group`). Denominators: the `:qa` / `:qar` examples
    present, and the questions with a `:qa` example (a missing `:qar` counts as wrong)."""
    right: dict[str, dict[str, bool]] = {"qa": {}, "qar": {}}
    for example, pred in zip(examples, predictions, strict=True):
        mode = example.id.rsplit(":", 1)[-1]
        if mode not in right:
            raise ValueError(f"VCR example id {example.id!r} does not end in ':qa' or ':qar'")
        right[mode][example.group or example.id.rsplit(":", 1)[0]] = pred == example.label
    qa, qar = right["qa"], right["qar"]
    return {"q2a": _percent(qa.values()), "qa2r": _percent(qar.values()),
            "q2ar": _percent(ok and qar.get(group, False) for group, ok in qa.items())}


def classification_accuracy(examples: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
    """SNLI-VE accuracy: the predicted class index equals the label."""
    return {"accuracy": _percent(p == ex.label for ex, p in zip(examples, predictions, strict=True))}


def vqa_metrics(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, float]:
    """Official VQA accuracy (madcache.data.vqa.vqa_accuracy), averaged over questions."""
    from madcache.data.vqa import vqa_accuracy

    scores = [vqa_accuracy(p, ex.answers) for ex, p in zip(examples, predictions, strict=True)]
    return {"vqa_accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0}


def _percent(flags) -> float:
    flags = [bool(f) for f in flags]
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


def score(dataset: str, examples: Sequence[Example], logits: torch.Tensor,
          answers: Sequence[str] | None = None) -> dict[str, float]:
    """Metrics of `dataset` from the student's logits [N, K]: the arg-max is the prediction
    (VQA: an index into `answers`, the student's answer vocabulary)."""
    predictions = logits.argmax(dim=-1).tolist()
    if dataset == "vcr":
        return vcr_metrics(examples, predictions)
    if dataset == "vqa":
        if answers is None:
            raise ValueError("VQA scoring needs the student's answer vocabulary")
        return vqa_metrics(examples, [answers[i] for i in predictions])
    return classification_accuracy(examples, predictions)


def evaluate_run(run_dir: str | Path, *, split: str, sm: bool = False,
                 root: str | Path | None = None, regions: str | Path | None = None
                 ) -> dict[str, float]:
    """Score a run's saved student on `split` (SM-transformed when `sm`) and record the result in
    metrics.json["eval"][split or f"{split}_sm"]. `root` overrides the run's dataset root,
    `regions` its region store (default: the run's eval-split store for its eval split)."""
    from madcache.train import (TrainConfig, load_eval_examples, load_run_student,
                                predict_logits, region_loader)

    run_dir = Path(run_dir)
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    if root is not None:
        config.root = str(root)
    if regions is None:
        regions = (config.eval_regions if split == config.eval_split else None) or config.regions
    examples = load_eval_examples(config, split, sm=sm)
    student = load_run_student(run_dir, device=config.device)
    logits = predict_logits(student, examples, config, regions=region_loader(str(regions)))
    result = score(config.dataset, examples, logits, getattr(student, "answers", None))
    record_eval(run_dir, f"{split}_sm" if sm else split, result)
    return result


def record_eval(run_dir: Path, key: str, result: Mapping[str, float]) -> None:
    """Write `result` under metrics.json["eval"][key], keeping everything else."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics.setdefault("eval", {})[key] = dict(result)
    write_json(path, metrics)


def write_json(path: Path, payload: Mapping, *, default: Callable | None = None) -> None:
    """Atomic JSON write (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=default) + "\n")
    tmp.replace(path)
