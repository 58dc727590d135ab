"""Inference with a student: logits for a list of examples, and loading a finished run's student."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from madcache.data.records import Example
from madcache.students.base import RegionInputs

STUDENT_DIR = "student"


@torch.no_grad()
def predict_logits(
    student,
    examples: Sequence[Example],
    *,
    regions: Callable[[Sequence[Example]], RegionInputs],
    batch_size: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The student's logits for `examples`, in order, on the CPU (eval mode; the student's
    train/eval mode is restored afterwards)."""
    was_training = student.training
    student.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        inputs = student.prepare(batch, regions(batch).to(device))
        out.append(student(inputs).logits.float().cpu())
    student.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def load_run_student(run_dir: str | Path, *, device: str = "cpu"):
    """The inference student of a finished run (projections are not part of it)."""
    from madcache.students import load_student

    return load_student(Path(run_dir) / STUDENT_DIR).to(device)
