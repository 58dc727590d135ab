"""The distillation losses of MD and MAD (../shared/MAD.md; docs/method.md), as pure functions.

Everything here works on tensors: a student output and a batch of cached teacher targets give the
per-instance terms `L_dv`, `L_dt`, `L'_dt` (each [B], registered in `TERMS` by the names methods
use, each with what it reads and trains), and `distillation_loss` adds them to a stage's own
loss (`task_loss`, or the student's MLM + ITM). Word selection (TS) happens once, when targets
are loaded (`madcache.method.selection.select_words`), never in the training step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.registry import Registry
from madcache.data.records import Example
from madcache.students.base import StudentOutput
from madcache.students.tokens import pool_token_spans


def feature_l1(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """||t - s||_1 taken as the mean absolute error over the last (feature) dim (MAD.md, MD).

    [..., D] x [..., D] -> [...]; the mean makes `w` independent of the teacher's width.
    """
    return (teacher - student).abs().mean(dim=-1)


def confidence_weights(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, weight: float
) -> torch.Tensor:
    """CW (MAD.md, "Confidence weighting"): r = max softmax(L_c) / max softmax(L_b) per instance,
    w_r = weight if r > 1 else 0. The student side is detached; the result carries no gradient.

    [B, K] x [B, K] -> [B].
    """
    with torch.no_grad():
        teacher_conf = F.softmax(teacher_logits.float(), dim=-1).amax(dim=-1)
        student_conf = F.softmax(student_logits.detach().float(), dim=-1).amax(dim=-1)
        ratio = teacher_conf / student_conf
        return torch.where(ratio > 1, torch.full_like(ratio, weight), torch.zeros_like(ratio))


def vision_term(teacher_image: torch.Tensor, student_image: torch.Tensor) -> torch.Tensor:
    """L_dv per instance: mean over the C scored texts of ||V_t - P_v(V_s,c)||_1.

    teacher_image [B, Dv]; student_image [B, C, Dv] (already projected). Returns [B]. In VCR the
    image token of each of the four question-answer sequences is distilled (MAD.md, CW).
    """
    return feature_l1(teacher_image.unsqueeze(1), student_image).mean(dim=1)


def text_term(teacher_text: torch.Tensor, student_text: torch.Tensor) -> torch.Tensor:
    """L_dt per instance: mean over the C texts of ||T_t,c - P_t(T_s,c)||_1. [B, C, Dt] -> [B]."""
    return feature_l1(teacher_text, student_text).mean(dim=1)


def word_term(
    teacher_words: torch.Tensor, student_words: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """L'_dt per instance: mean over the selected words (all C texts) of ||f_tt(w) - P_w(f_st(w))||_1.

    teacher_words, student_words [B, C, m, Dt]; mask [B, C, m] bool. An instance with no selected
    word contributes 0. Returns [B].
    """
    per_word = feature_l1(teacher_words, student_words) * mask
    count = mask.flatten(1).sum(dim=1).clamp(min=1)
    return per_word.flatten(1).sum(dim=1) / count


def distillation_loss(
    own: torch.Tensor, terms: Sequence[torch.Tensor], weights: torch.Tensor | float
) -> torch.Tensor:
    """A stage's loss: its own loss plus the weighted distillation terms, averaged over the batch:
    `own + mean_b(weight_b * sum_k term_k,b)`.

    This is every objective of the paper (MAD.md): L_MD = L_task + w (L_dv + L_dt); the unimodal
    ablations with one term; L_MAD = L_task + w' (L_dv + L_dt + L'_dt), with CW passing the
    per-instance w_r [B] from `confidence_weights` as `weights`; L_AF = L_MLM + L_ITM +
    w (L_dv + L_dt). `terms` are per-instance [B] tensors (an empty list adds nothing).
    """
    if not terms:
        return own
    return own + _batch_mean(torch.stack(list(terms)).sum(dim=0) * weights)


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum()


def task_loss(student: Any, logits: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
    """L_task of a student's logits on `examples` (`task_criterion`): their labels, or for a
    multilabel student (VQA) their soft scores over its answer vocabulary."""
    if student.task == "multilabel":
        target = torch.zeros_like(logits)
        index = {a: i for i, a in enumerate(student.answers)}
        for b, ex in enumerate(examples):
            for answer, value in (ex.answer_scores or {}).items():
                if answer in index:
                    target[b, index[answer]] = value
        return task_criterion(logits, target)
    return task_criterion(logits, torch.tensor([ex.label for ex in examples], device=logits.device))


def task_criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_task: cross-entropy over choices/classes for integer labels [B]; for soft scores
    [B, V] (VQA) BCE summed over the answer vocabulary (mean x V), as UNITER does. The students'
    and the adapter heads' task loss."""
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
    return F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------- the terms


class TeacherBatch(Protocol):
    """The cached teacher targets of a batch as tensors, rows aligned with the examples (the
    trainer's `BatchTargets`); a field a method does not need is None."""

    image: torch.Tensor | None  # [B, Dv]
    text_eos: torch.Tensor | None  # [B, C, Dt]
    word_feat: torch.Tensor | None  # [B, C, m, Dt]
    word_span: torch.Tensor | None  # [B, C, m, 2]
    word_mask: torch.Tensor | None  # [B, C, m]
    logits: torch.Tensor | None  # [B, K]
    candidates: torch.Tensor | None  # [B, K]


def vision_distillation(
    out: StudentOutput, targets: TeacherBatch, proj: Projections
) -> torch.Tensor:
    """L_dv per instance, from the student's image tokens."""
    return vision_term(targets.image, proj.vision(out.image_token))


def text_distillation(out: StudentOutput, targets: TeacherBatch, proj: Projections) -> torch.Tensor:
    """L_dt per instance, from the student's CLS tokens."""
    return text_term(targets.text_eos, proj.text(out.cls_token))


def word_distillation(out: StudentOutput, targets: TeacherBatch, proj: Projections) -> torch.Tensor:
    """L'_dt per instance: f_st(w) is the mean of the student's sub-token outputs over each
    selected word's character span."""
    feat, mask = pool_token_spans(
        out.text_tokens, out.token_spans, targets.word_span, targets.word_mask
    )
    return word_term(targets.word_feat, proj.word(feat), mask & targets.word_mask)


@dataclass(frozen=True)
class Term:
    """A distillation term: `compute(student output, teacher batch, projections) -> [B]`, and
    what it declares, from which everything else follows (the targets a method loads, the
    projections a run trains, w' of TS): the cached target it reads (`needs`: a `Targets` field,
    "image", "text_eos" or "words"), and the learned projection it maps the student through
    (`projection`, an attribute of `Projections`) to the teacher width `dim` (a key of the cache
    manifest's `dims`: "image" or "text")."""

    needs: str
    compute: Callable[[StudentOutput, TeacherBatch, Projections], torch.Tensor]
    projection: str
    dim: str

    @property
    def selects_words(self) -> bool:
        """Whether the term distils TS's selected words (then w' counts them: `stage_weight`)."""
        return self.needs == "words"


# A new term: a function above and one entry here (or a plugin's "madcache.terms" entry point).
TERMS: Registry[Term] = Registry("distillation term", group="madcache.terms")
TERMS.register("dv", Term("image", vision_distillation, "vision", "image"))  # L_dv
TERMS.register("dt", Term("text_eos", text_distillation, "text", "text"))  # L_dt
TERMS.register("dwt", Term("words", word_distillation, "word", "text"))  # L'_dt (TS)


class Projections(nn.Module):
    """FitNets-style learned projections from the student width to each teacher width, one per
    distilled term (its `Term.projection`): P_v (V_s -> Dv), P_t (T_s -> Dt) and P_w (word
    features -> Dt) for the paper's terms. `widths` maps a projection to its output width, in
    creation order (None: not trained; a term's projection that is absent reads as None).
    Training-only: they live in the trainer state for resume and are dropped from the inference
    checkpoint."""

    def __init__(self, hidden: int, widths: Mapping[str, int | None]) -> None:
        super().__init__()
        for name in TERMS:
            setattr(self, TERMS.get(name).projection, None)
        for name, width in widths.items():
            setattr(self, name, nn.Linear(hidden, width) if width else None)


def projection_widths(terms: Sequence[str], dims: Mapping[str, int]) -> dict[str, int | None]:
    """The projections that distilling `terms` trains, in the order of `terms`: each term's
    `projection` to its teacher width (`dims`: a cache manifest's "image" / "text" widths)."""
    widths: dict[str, int | None] = {}
    for name in terms:
        term = TERMS.get(name)
        widths.setdefault(term.projection, dims.get(term.dim))
    return widths


def candidate_logits(out: StudentOutput, targets: TeacherBatch) -> torch.Tensor:
    """The student's logits over the teacher's candidates, for CW's max softmax (VQA: gathered
    at the cached answer ids; elsewhere all of them)."""
    if targets.candidates is None:
        return out.logits
    return out.logits.gather(1, targets.candidates.clamp(min=0))
