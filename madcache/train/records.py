"""What a finished run records in metrics.json: how it trained and its history with the final
validation (train/loop.py builds the history)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from madcache.method.methods import TASK
from madcache.train.checkpoint import TrainerState, best_step
from madcache.train.config import TrainConfig
from madcache.train.setup import Setup


def training_summary(
    config: TrainConfig, *, world: int, precision: str, data_figures: dict[str, Any]
) -> dict[str, Any]:
    """How this run trained: metrics.json["training"] (the data figures cover this call)."""
    per_rank = math.ceil(config.batch_size / world)
    return {
        "world_size": world,
        "batch_size": config.batch_size,
        "per_rank_batch": per_rank,
        "grad_accum": config.grad_accum,
        "micro_batch": math.ceil(per_rank / config.grad_accum),
        "precision": precision,
        "device": config.device,
        "optimizer": config.optimizer,
        "schedule": config.schedule,
        "data": data_figures,
    }


def run_metrics(setup: Setup, state: TrainerState, training: dict[str, Any]) -> dict[str, Any]:
    """metrics.json (docs/architecture.md): the history and the final validation (select =
    best: the chosen step's, with the dev curve and the step as 'selection')."""
    config = setup.config
    final = state.history[-1].get("eval") if state.history else None
    selection = best_step(state.history, config.select_metric) if config.select == "best" else None
    if selection is not None:  # the weights the run ended with: the chosen step's
        final = next(
            h["eval"]
            for h in state.history
            if h["stage"] == TASK and h["step"] == selection["step"] and "eval" in h
        )
    evaluation = {config.eval_split: final} if final is not None else {}
    return {
        "run": Path(config.out).name,
        "dataset": config.dataset,
        "method": config.method,
        "student": config.student,
        "teachers": setup.teachers,
        "shots": config.per_category
        if config.per_category is not None
        else setup.provenance.get("split_shots"),
        "seed": config.seed,
        "status": "complete",
        "history": state.history,
        "eval": evaluation,
        "cw_fired": state.cw_fired(),
        "training": training,
        "provenance": setup.provenance,
        **({"selection": {**selection, "split": config.eval_split}} if selection else {}),
    }
