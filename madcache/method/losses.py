"""The distillation losses of MD and MAD (../shared/MAD.md; docs/method.md), as pure functions.

Everything here works on tensors: the trainer turns a student output and a batch of cached teacher
targets into the per-instance terms `L_dv`, `L_dt`, `L'_dt` (each [B]) and combines them with
`md_loss` / `mad_loss` / `af_loss`. Word selection (TS) happens once, when targets are loaded
(`madcache.method.selection.select_words`), never in the training step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def feature_l1(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """||t - s||_1 taken as the mean absolute error over the last (feature) dim (MAD.md, MD).

    [..., D] x [..., D] -> [...]; the mean makes `w` independent of the teacher's width.
    """
    return (teacher - student).abs().mean(dim=-1)


def confidence_weights(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                       weight: float) -> torch.Tensor:
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


def word_term(teacher_words: torch.Tensor, student_words: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """L'_dt per instance: mean over the selected words (all C texts) of ||f_tt(w) - P_w(f_st(w))||_1.

    teacher_words, student_words [B, C, m, Dt]; mask [B, C, m] bool. An instance with no selected
    word contributes 0. Returns [B].
    """
    per_word = feature_l1(teacher_words, student_words) * mask
    count = mask.flatten(1).sum(dim=1).clamp(min=1)
    return per_word.flatten(1).sum(dim=1) / count


def md_loss(task: torch.Tensor, vision: torch.Tensor | None, text: torch.Tensor | None, *,
            w: float) -> torch.Tensor:
    """L_MD = L_task + w * (L_dv + L_dt) (MAD.md, "Multimodal Distillation").

    `vision` / `text` are the per-instance terms [B]; pass None for the unimodal ablations
    (vision-only: L_task + w L_dv; text-only: L_task + w L_dt).
    """
    return task + w * _batch_mean(_sum_terms(vision, text, like=task))


def mad_loss(task: torch.Tensor, vision: torch.Tensor | None, text: torch.Tensor | None,
             words: torch.Tensor | None, *, weights: torch.Tensor | float) -> torch.Tensor:
    """L_MAD = L_task + w' * (L_dv + L_dt + L'_dt) (MAD.md, "MAD").

    `weights` is w' (a float), or the per-instance CW weights w_r [B] from `confidence_weights`,
    which replace w' instance by instance. Terms set to None are off (the ablations).
    """
    distill = _sum_terms(vision, text, words, like=task)
    return task + _batch_mean(distill * weights)


def af_loss(pretrain: dict[str, torch.Tensor], vision: torch.Tensor | None,
            text: torch.Tensor | None, *, w: float) -> torch.Tensor:
    """L_AF = L_MLM + L_ITM + w * (L_dv + L_dt) (MAD.md, "Adaptive finetuning", stage 1).

    `pretrain` is `student.pretrain_losses(...)` ({'mlm': .., 'itm': ..}); no task labels.
    """
    base = sum(pretrain.values(), torch.zeros(()))
    return base + w * _batch_mean(_sum_terms(vision, text, like=base))


def _sum_terms(*terms: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    present = [t for t in terms if t is not None]
    if not present:
        return like.new_zeros(1)
    return torch.stack(present).sum(dim=0)


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum()


class Projections(nn.Module):
    """FitNets-style learned projections from the student width to each teacher width:
    P_v (V_s -> Dv), P_t (T_s -> Dt) and P_w (word features -> Dt). Training-only: they live in
    the trainer state for resume and are dropped from the inference checkpoint."""

    def __init__(self, hidden: int, *, image_dim: int | None, text_dim: int | None,
                 words: bool) -> None:
        super().__init__()
        self.vision = nn.Linear(hidden, image_dim) if image_dim else None
        self.text = nn.Linear(hidden, text_dim) if text_dim else None
        self.word = nn.Linear(hidden, text_dim) if (text_dim and words) else None
