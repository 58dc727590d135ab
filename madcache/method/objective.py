"""One step's loss for one stage of a method: the composition a `Method` entry describes.

    task stage:  L_task            + weight * sum of the stage's terms   (MD / MAD / ablations)
    af stage:    L_MLM + L_ITM     + w      * sum of the stage's terms   (AF, MAD.md)

`weight` is w or w' (`methods.stage_weight`), replaced per instance by CW's w_r when the stage
has confidence weighting. Nothing here knows method names: adding a method or a term never
touches this module.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from madcache.data.records import Example
from madcache.method.losses import (TERMS, Projections, TeacherBatch, confidence_weights,
                                    distillation_loss, task_loss)
from madcache.method.methods import AF, Stage
from madcache.students.base import StudentOutput


def own_losses(stage: Stage, student: Any, inputs: Any, examples: Sequence[Example],
               generator: torch.Generator) -> tuple[dict[str, torch.Tensor], StudentOutput | None]:
    """The stage's own (non-distillation) losses by name, and the student output when the
    stage needs one: AF's label-free MLM + ITM (`student.pretrain_losses`; its output only if
    the stage distils), or the task loss."""
    if stage.name == AF:
        losses = student.pretrain_losses(inputs, examples, generator)
        return losses, student(inputs) if stage.terms else None
    out = student(inputs)
    return {"task": task_loss(student, out.logits, examples)}, out


def candidate_logits(out: StudentOutput, targets: TeacherBatch) -> torch.Tensor:
    """The student's logits over the teacher's candidates (VQA: gathered at the cached answer
    ids; elsewhere all of them), for CW's max softmax."""
    if targets.candidates is None:
        return out.logits
    return out.logits.gather(1, targets.candidates.clamp(min=0))


def stage_loss(stage: Stage, *, student: Any, projections: Projections,
               examples: Sequence[Example], inputs: Mapping[str, Any],
               targets: TeacherBatch | None, weight: float, generator: torch.Generator
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch in `stage` (`inputs`: the student's prepared inputs of `examples`),
    and its parts for logging. With CW, `cw_fired` / `cw_seen` count the instances whose teacher
    was more confident than the student."""
    own, out = own_losses(stage, student, inputs, examples, generator)
    base = sum(own.values(), torch.zeros((), device=next(iter(own.values())).device))
    parts = {name: value.item() for name, value in own.items()}
    terms = {name: TERMS[name].compute(out, targets, projections) for name in stage.terms}
    weights: torch.Tensor | float = weight
    if stage.confidence:
        weights = confidence_weights(targets.logits, candidate_logits(out, targets), weight)
        parts.update(cw_fired=float((weights > 0).sum().item()), cw_seen=float(weights.numel()))
    loss = distillation_loss(base, list(terms.values()), weights)
    parts["loss"] = loss.item()
    parts.update({name: term.mean().item() for name, term in terms.items()})
    return loss, parts
