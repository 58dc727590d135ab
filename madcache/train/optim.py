"""Optimizers and learning-rate schedules, chosen by name in `[train]` (docs/training.md,
"Optimizers and schedules"): what UNITER's and VL-BERT's published VCR recipes use, beside
madcache's own default (AdamW, linear warm-up and decay).

- `make_optimizer`: torch AdamW, UNITER's AdamW (`UniterAdamW`) or torch SGD with momentum
  over the student and the projections, in parameter groups: with / without weight decay
  (`no_decay`), and the student's task head (the parameters under its `head_prefixes`) at
  `head_lr_mul` x the rate, as UNITER's `train_vcr.py` `build_optimizer` groups them. Each
  group carries its `lr_mul`.
- `lr_at`: the rate of a stage's step (0-based) under `schedule`: `linear` (madcache's),
  `uniter-linear` (UNITER `optim/sched.py` `get_lr_sched`) or `multistep` (VL-BERT
  `common/lr_scheduler.py` `WarmupMultiStepLR` as `vcr/function/train.py` steps it).
- `cosine`: warm-up, then cosine decay to 0, for the trainers outside the `[train]` loop (the
  demo teacher's CLIP pretraining, the adapter heads). Every schedule of madcache is here.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from madcache.core.errors import ConfigError
from madcache.train.config import TrainConfig

# UNITER optim/misc.py and train_vcr.py build_optimizer: a parameter whose name contains one of
# these is not decayed (a substring test: a LayerNorm not named LayerNorm is decayed)
UNITER_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
UNITER_MIN_LR = 1e-8  # get_lr_sched: a rate <= 0 becomes 1e-8 (the last step's)


# ----------------------------------------------------------------------------- schedules


def lr_at(
    step: int, total: int, *, base: float, warmup: float, config: TrainConfig | None = None
) -> float:
    """The learning rate of step `step` (0-based) of a stage of `total` steps with peak `base`,
    warming up over round(`warmup` x `total`) steps, under `config.schedule` (default: linear).
    A parameter group's rate is this times its `lr_mul`."""
    schedule = "linear" if config is None else config.schedule
    warm = int(round(warmup * total))
    if schedule == "linear":
        return linear(step, total, base=base, warm=warm)
    if schedule == "uniter-linear":
        return uniter_linear(step, total, base=base, warm=warm)
    return multistep(
        step,
        base=base,
        warm=warm,
        milestones=milestones(config.lr_steps, total),
        factor=config.lr_factor,
        method=config.warmup_method,
        warmup_factor=config.warmup_factor,
    )


def linear(step: int, total: int, *, base: float, warm: int) -> float:
    """madcache's: base x (step + 1) / warm during the warm-up, then base x (total - step) /
    (total - warm), linear to base / (total - warm) at the last step."""
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


def cosine(step: int, total: int, *, base: float, warm: int = 0) -> float:
    """base x (step + 1) / warm during the warm-up, then base x (1 + cos(pi x progress)) / 2,
    progress going from 0 (the first step after the warm-up) towards 1 (step `total`)."""
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def uniter_linear(step: int, total: int, *, base: float, warm: int) -> float:
    """UNITER's `get_lr_sched(global_step)` with BERT's `warmup_linear`, called with the update's
    1-based number s = step + 1: base x s / warm while s < warm, then base x max(0, (total - s) /
    (total - warm)); a rate <= 0 (the last step's) becomes 1e-8. Over the decay this is
    `linear` one step further on."""
    s = step + 1
    rate = base * (s / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return rate if rate > 0 else UNITER_MIN_LR


def milestones(fractions: Sequence[float], total: int) -> list[int]:
    """The steps where multistep multiplies the rate: floor(fraction x total), as VL-BERT's
    int(epoch x steps per epoch) for fraction = LR_STEP / END_EPOCH (the 1e-9 keeps 0.57 x 100
    at 57, not 56)."""
    return [int(math.floor(f * total + 1e-9)) for f in fractions]


def multistep(
    step: int,
    *,
    base: float,
    warm: int,
    milestones: Sequence[int],
    factor: float,
    method: str,
    warmup_factor: float,
) -> float:
    """VL-BERT's WarmupMultiStepLR as its trainer uses it: the scheduler steps *before* each
    optimizer step, so update `step` (0-based) gets the rate at t = step + 1:

        base x w(t) x factor ** (number of milestones <= t)
        w(t) = warmup_factor x (1 - t / warm) + t / warm   (linear), or warmup_factor
               (constant), while t < warm; else 1."""
    t = step + 1
    scale = 1.0
    if t < warm:
        scale = warmup_factor if method == "constant" else warmup_factor * (1 - t / warm) + t / warm
    return base * scale * factor ** bisect_right(list(milestones), t)


# ----------------------------------------------------------------------------- optimizers


def head_names(student: nn.Module) -> set[str]:
    """The names of the parameters of the student's task head: those under one of its
    `head_prefixes` (a student attribute; docs/students.md)."""
    prefixes = tuple(getattr(student, "head_prefixes", ()))
    return {n for n, _ in student.named_parameters() if prefixes and n.startswith(prefixes)}


def decays(name: str, param: torch.Tensor, rule: str) -> bool:
    """Whether weight decay applies to a parameter under the `no_decay` rule."""
    if rule == "ndim":
        return param.ndim >= 2
    if rule == "names":
        return not any(key in name for key in UNITER_NO_DECAY)
    return True


def param_groups(
    student: nn.Module, projections: nn.Module, config: TrainConfig
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups (trainable parameters only, in module order):

        head_lr_mul == 1:  [decayed, not decayed]                       (madcache's two)
        otherwise:         [body decayed, body not decayed, head decayed, head not decayed]

    each with `weight_decay` and `lr_mul`. The head is the student's `head_prefixes`; the
    projections are training-only, not the head: they get the base rate."""
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    named += [(f"projections.{n}", p) for n, p in projections.named_parameters() if p.requires_grad]
    head = head_names(student)
    if config.head_lr_mul != 1.0 and not head:
        raise ConfigError(
            f"head_lr_mul: student '{config.student}' declares no task head "
            "(head_prefixes), so it has no head to give another rate; leave "
            "head_lr_mul at 1"
        )
    parts = (
        [(False, 1.0)] if config.head_lr_mul == 1.0 else [(False, 1.0), (True, config.head_lr_mul)]
    )
    groups = []
    for in_head, mul in parts:
        chosen = [(n, p) for n, p in named if config.head_lr_mul == 1.0 or (n in head) == in_head]
        for decayed in (True, False):
            groups.append(
                {
                    "params": [p for n, p in chosen if decays(n, p, config.no_decay) == decayed],
                    "weight_decay": config.weight_decay if decayed else 0.0,
                    "lr_mul": mul,
                }
            )
    return groups


def make_optimizer(
    student: nn.Module, projections: nn.Module, config: TrainConfig
) -> torch.optim.Optimizer:
    """torch AdamW (betas, eps), UNITER's AdamW (`UniterAdamW`) or torch SGD (momentum; weight
    decay added to the gradient, as VL-BERT's) over `param_groups`."""
    groups = param_groups(student, projections, config)
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "uniter-adamw":
        return UniterAdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps)


class UniterAdamW(torch.optim.Optimizer):
    """AdamW as UNITER's `optim/adamw.py` computes it (the BERT-era AdamW), which differs from
    `torch.optim.AdamW` in two places. With m, v the moment averages after n steps:

        p <- p - lr sqrt(1 - beta2^n) / (1 - beta1^n) x m / (sqrt(v) + eps)
        p <- p - lr wd p                     (decay after the update, on the updated weights)

    torch divides sqrt(v) by sqrt(1 - beta2^n) before adding eps (UNITER's eps is in effect
    eps / sqrt(1 - beta2^n), larger early on) and decays before the update."""

    def __init__(
        self,
        params: Any,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # `step` a tensor, as torch's, so checkpoints hold it
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                n = int(state["step"].item())
                avg, avg_sq = state["exp_avg"], state["exp_avg_sq"]
                avg.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                avg_sq.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                size = group["lr"] * math.sqrt(1 - beta2**n) / (1 - beta1**n)
                param.addcdiv_(avg, avg_sq.sqrt().add_(group["eps"]), value=-size)
                if group["weight_decay"] > 0:
                    param.add_(param, alpha=-group["lr"] * group["weight_decay"])


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, lr: float) -> None:
    """One plain optimizer step of the trainers beside the `[train]` loop (the adapter heads, the
    demo teacher and student): every group at `lr` (x its `lr_mul`), the gradients cleared,
    `loss` back-propagated, the step applied. The loop's `train_step` does this over
    micro-batches and ranks, with clipping and the non-finite check."""
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each group's rate for the next step: `lr` x its `lr_mul` (1 in a checkpoint saved before
    groups carried one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mul", 1.0)
