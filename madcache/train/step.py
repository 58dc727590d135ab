"""One optimisation step's loss: the run's method says what its current stage optimises
(`madcache.method.objective.stage_loss`); this module supplies the run's student, projections
and weights.

`inputs` are the student's prepared inputs (tokenised and collated ahead of the step by the data
pipeline, train/stream.py); the returned parts are means over the batch, CW's counts totals."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from madcache.data.records import Example
from madcache.method.methods import stage_weight
from madcache.method.objective import stage_loss
from madcache.train.data import BatchTargets
from madcache.train.setup import Setup


def loss_step(setup: Setup, stage: str, examples: Sequence[Example],
              targets: BatchTargets | None, inputs: Mapping[str, Any],
              generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one (micro-)batch in the method's stage `stage` ("af" or "task") and its
    parts (what `TrainModule.forward` computes under DDP)."""
    spec, config = setup.method.stage(stage), setup.config
    weight = stage_weight(spec, w=config.w, m=config.m, w_prime=config.w_prime,
                          w_prime_rule=config.w_prime_rule)
    return stage_loss(spec, student=setup.student, projections=setup.projections,
                      examples=examples, inputs=inputs, targets=targets, weight=weight,
                      generator=generator)
