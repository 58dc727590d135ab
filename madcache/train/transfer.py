"""Transfer diagnostics: did distillation move the student's features toward the teacher's?

A run's loss going down says little: projections can match only the targets' mean (what the
demo's MD did, issue 33). So at the end of a distilling run, on held-out examples (the eval
split, whose targets come from its own cache, `eval_cache`), the projected student features
P_v(V_s) and P_t(T_s) are compared with the teacher targets V_t and T_t:

- `centred_cosine`: the mean over examples of cos(pred - mu, target - mu), mu the targets' mean
  over the held-out examples. 0 for a predictor that knows only the mean; 1 when every
  example's own direction from the mean is matched.
- `r2`: 1 - sum ||pred - target||^2 / sum ||target - mu||^2. 0 for the targets' own mean;
  negative when worse than it.
- `mean_only_r2`: the same for the training targets' mean (what a student that learned only the
  mean would score; <= 0 up to the two means' difference).
- `distilled_zero_shot` (multiple choice): the accuracy of argmax_c cos(P_v(V_s,c), P_t(T_s,c)),
  the student scoring the choices as the teacher does (CLIP's image-text cosine).

Images are compared once per example (the first choice's V_s), texts per choice.

`input_probe` asks the question before any of this: can the student's *inputs* (its region
features and boxes) express what the teacher sees at all? A ridge regression from the inputs to
V_t, fitted on training images and scored the same way on held-out images: an R^2 near 0 means
no student, however distilled, could match the image targets from what it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from madcache.data.records import Example
from madcache.method.losses import Projections
from madcache.students.base import RegionInputs

HELD_OUT = 256  # eval examples the diagnostics read (the first ones in image order)


def centred_cosine(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor) -> float:
    return F.cosine_similarity(pred - mean, target - mean, dim=-1).mean().item()


def r2(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor) -> float:
    residual = (pred - target).pow(2).sum()
    spread = (target - mean).pow(2).sum().clamp(min=1e-12)
    return (1 - residual / spread).item()


def feature_fit(
    pred: torch.Tensor, target: torch.Tensor, train_mean: torch.Tensor | None
) -> dict[str, float]:
    """The three numbers of one feature (rows = instances, last dim = features)."""
    mean = target.mean(dim=0)
    fit = {"centred_cosine": centred_cosine(pred, target, mean), "r2": r2(pred, target, mean)}
    if train_mean is not None:
        fit["mean_only_r2"] = r2(train_mean.expand_as(target), target, mean)
    return fit


@torch.no_grad()
def student_features(
    student: Any,
    projections: Projections,
    examples: Sequence[Example],
    *,
    regions: Callable[[Sequence[Example]], RegionInputs],
    batch_size: int,
    device: str,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """P_v(V_s) [N, C, Dv] and P_t(T_s) [N, C, Dt] (None without that projection), eval mode."""
    was_training = student.training
    student.eval()
    image, text = [], []
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        out = student(student.prepare(batch, regions(batch).to(device)))
        if projections.vision is not None:
            image.append(projections.vision(out.image_token).float().cpu())
        if projections.text is not None:
            text.append(projections.text(out.cls_token).float().cpu())
    student.train(was_training)
    return (torch.cat(image) if image else None), (torch.cat(text) if text else None)


def transfer_report(
    student: Any,
    projections: Projections,
    examples: Sequence[Example],
    targets: Any,
    *,
    train_means: dict[str, torch.Tensor],
    regions: Callable[[Sequence[Example]], RegionInputs],
    batch_size: int,
    device: str,
    multiple_choice: bool,
) -> dict[str, Any]:
    """The diagnostics of the module docstring for `examples` and their teacher `targets`
    (`BatchTargets` with `image` [N, Dv] and `text_eos` [N, C, Dt] where distilled)."""
    image, text = student_features(
        student, projections, examples, regions=regions, batch_size=batch_size, device=device
    )
    report: dict[str, Any] = {"examples": len(examples)}
    if image is not None and targets.image is not None:
        report["image"] = feature_fit(image[:, 0], targets.image, train_means.get("image"))
    if text is not None and targets.text_eos is not None:
        dim = targets.text_eos.shape[-1]
        report["text"] = feature_fit(
            text.reshape(-1, dim), targets.text_eos.reshape(-1, dim), train_means.get("text_eos")
        )
    labelled = [i for i, ex in enumerate(examples) if ex.label is not None]
    if multiple_choice and image is not None and text is not None and labelled:
        scores = F.cosine_similarity(image, text, dim=-1)[labelled]  # [N, C]
        labels = torch.tensor([examples[i].label for i in labelled])
        report["distilled_zero_shot"] = (
            100.0 * (scores.argmax(dim=1) == labels).float().mean().item()
        )
    return report


def region_vectors(inputs: RegionInputs) -> torch.Tensor:
    """Each image's inputs as one vector [N, R * (D + 4) + D]: every region's features and box
    in the store's order (padding zeroed), then the mean over its regions."""
    mask = inputs.mask.unsqueeze(-1).float()
    per_region = torch.cat([inputs.feat.float(), inputs.boxes.float()], dim=-1) * mask
    mean = (inputs.feat.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.cat([per_region.flatten(1), mean], dim=1)


def input_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    *,
    ridge: float = 1.0,
) -> dict[str, float]:
    """Ridge regression (inputs standardised on train, penalty `ridge` x the number of
    training rows) from inputs to targets, fitted on (train_x, train_y) and scored on the
    held-out rows with `feature_fit` (the train targets' mean as the mean-only predictor)."""
    mean_x, std_x = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    x = ((train_x - mean_x) / std_x).double()
    mean_y = train_y.mean(0)
    gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ (train_y - mean_y).double())
    pred = (((eval_x - mean_x) / std_x).double() @ weights).float() + mean_y
    return {
        **feature_fit(pred, eval_y, mean_y),
        "train_rows": len(train_x),
        "eval_rows": len(eval_x),
        "ridge": ridge,
    }
