"""One optimisation step's loss: the task stage (L_task + MD / MAD terms) and the adaptive
finetuning stage (MLM + ITM + MD), from a student output and a batch of cached targets.

`inputs` are the student's prepared inputs (tokenised and collated ahead of the step by the data
pipeline, train/stream.py); the returned parts are means over the batch."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.nn import functional as F

from madcache.data.records import Example
from madcache.method.losses import (af_loss, confidence_weights, mad_loss, md_loss, text_term,
                                    vision_term, word_term)
from madcache.students.base import StudentOutput
from madcache.train.data import BatchTargets
from madcache.train.setup import Setup


def task_loss(student, logits: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
    """Cross-entropy over choices/classes; VQA: BCE against the soft answer scores."""
    if student.task == "multilabel":
        target = torch.zeros_like(logits)
        index = {a: i for i, a in enumerate(student.answers)}
        for b, ex in enumerate(examples):
            for answer, value in (ex.answer_scores or {}).items():
                if answer in index:
                    target[b, index[answer]] = value
        return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
    labels = torch.tensor([ex.label for ex in examples], device=logits.device)
    return F.cross_entropy(logits, labels)


def student_word_features(out: StudentOutput, targets: BatchTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """f_st(w): the mean of the student's sub-token outputs over each selected word's span."""
    from madcache.students.tokens import pool_token_spans

    return pool_token_spans(out.text_tokens, out.token_spans, targets.word_span, targets.word_mask)


def loss_step(setup: Setup, examples: Sequence[Example], targets: BatchTargets | None,
              inputs: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """One task-stage loss: L_task, plus MD (w) or MAD (w', CW per instance) terms."""
    method, proj, config = setup.method, setup.projections, setup.config
    out = setup.student(inputs)
    task = task_loss(setup.student, out.logits, examples)
    if not method.distils:
        return task, {"task": task.item()}
    vision = vision_term(targets.image, proj.vision(out.image_token)) if method.vision else None
    text = text_term(targets.text_eos, proj.text(out.cls_token)) if method.text else None
    words = None
    if method.words:
        feat, mask = student_word_features(out, targets)
        words = word_term(targets.word_feat, proj.word(feat), mask & targets.word_mask)
    weight = method.weight(w=config.w, w_prime=config.resolved_w_prime)
    if method.confidence:
        student_logits = out.logits
        if targets.candidates is not None:
            student_logits = out.logits.gather(1, targets.candidates.clamp(min=0))
        weights = confidence_weights(targets.logits, student_logits, weight)
        loss = mad_loss(task, vision, text, words, weights=weights)
        cw_rate = (weights > 0).float().mean().item()
    elif method.adaptive:
        loss = mad_loss(task, vision, text, words, weights=weight)
    else:
        loss = md_loss(task, vision, text, w=weight)
    parts = {"task": task.item(), "loss": loss.item()}
    for name, term in (("dv", vision), ("dt", text), ("dwt", words)):
        if term is not None:
            parts[name] = term.mean().item()
    if method.confidence:
        parts["cw_rate"] = cw_rate     # share of instances whose teacher is the more confident
    return loss, parts


def af_step(setup: Setup, examples: Sequence[Example], targets: BatchTargets | None,
            inputs: Mapping[str, Any], generator: torch.Generator
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """One adaptive-finetuning loss: MLM + ITM (no labels) + w (L_dv + L_dt)."""
    method, proj = setup.method, setup.projections
    pretrain = setup.student.pretrain_losses(inputs, generator)
    vision = text = None
    if method.vision or method.text:
        out = setup.student(inputs)
        vision = vision_term(targets.image, proj.vision(out.image_token)) if method.vision else None
        text = text_term(targets.text_eos, proj.text(out.cls_token)) if method.text else None
    loss = af_loss(pretrain, vision, text, w=setup.config.w)
    return loss, {"loss": loss.item(), **{k: v.item() for k, v in pretrain.items()}}
