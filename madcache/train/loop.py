"""The training loop: a student, cached teacher targets, a method (docs/method.md).

Reads top to bottom: `TrainConfig` (train/config.py) -> `setup` (train/setup.py: examples,
low-shot split, cached targets, regions, student, projections) -> `train` (the stages the
method has: AF, then the task; checkpoints; periodic validation) -> the run directory of
docs/architecture.md. The data order is a pure function of (seed, stage, epoch) and the RNG
states are checkpointed, so a resumed run ends with the same weights and metrics as an
uninterrupted one.

This package never imports a teacher (madcache.teachers) or open_clip: everything a loss needs
from a teacher comes from the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from madcache.core.io import write_json
from madcache.data.metrics import score_logits, without_counts
from madcache.students.predict import STUDENT_DIR, predict_logits
from madcache.train.checkpoint import (TRAINER_STATE, TrainerState, load_checkpoint,
                                       save_checkpoint)
from madcache.train.config import TrainConfig
from madcache.train.data import DataSource, iterate
from madcache.train.setup import Setup, setup
from madcache.train.step import loss_step


def stages(setup: Setup) -> list[tuple[str, DataSource, int]]:
    """(name, data, steps) of each stage the method has, in order: AF (the whole training
    split, `af_epochs` or `af_max_steps` long), then the task."""
    config, out = setup.config, []
    for name in setup.method.stage_names:
        af = name == "af"
        source = setup.af_source if af else setup.task_source
        epochs, max_steps = (config.af_epochs, config.af_max_steps) if af else \
            (config.epochs, config.max_steps)
        steps = max_steps if max_steps is not None else \
            epochs * source.steps_per_epoch(config.batch_size)
        out.append((name, source, steps))
    return out


def lr_at(step: int, total: int, *, base: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of `total` steps, then linear decay to 0."""
    warm = int(round(warmup * total))
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(setup: Setup) -> torch.optim.AdamW:
    """AdamW over student + projections; no weight decay on biases and norms (ndim < 2)."""
    params = [p for p in _trainables(setup) if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": setup.config.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=setup.config.lr)


def _trainables(setup: Setup) -> list[torch.nn.Parameter]:
    return list(setup.student.parameters()) + list(setup.projections.parameters())


def train(setup: Setup) -> dict[str, Any]:
    """Run (or resume) all stages, then validate and write metrics.json. Returns the metrics."""
    config, run_dir = setup.config, Path(setup.config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    state, generator = TrainerState(stage=stages(setup)[0][0]), torch.Generator()
    generator.manual_seed(config.seed)
    optimizer = make_optimizer(setup)
    if config.resume and (run_dir / TRAINER_STATE).exists():
        state = load_checkpoint(run_dir, setup, optimizer, generator)
    for name, source, total in stages(setup):
        if _stage_done(state.stage, name):
            continue
        if state.stage != name:
            state.stage, state.stage_step, optimizer = name, 0, make_optimizer(setup)
        run_stage(setup, state, optimizer, generator, source, total)
        record(state, validate(setup) if name == "task" else None)
    state.stage = "done"
    save_checkpoint(run_dir, setup, state, optimizer, generator)
    setup.save_student(setup.student, run_dir / STUDENT_DIR)
    metrics = run_metrics(setup, state)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def run_stage(setup: Setup, state: TrainerState, optimizer: torch.optim.Optimizer,
              generator: torch.Generator, source: DataSource, total: int) -> None:
    """Train one stage from `state.stage_step` to `total` steps."""
    config = setup.config
    setup.student.train()
    batches = iterate(source, seed=config.seed, stage=state.stage, batch_size=config.batch_size,
                      start=state.stage_step)
    bar = tqdm(total=total, initial=state.stage_step, desc=f"{state.stage} ({config.method})",
               disable=None)
    while state.stage_step < total:
        examples, targets = next(batches)
        targets = None if targets is None else targets.to(config.device)
        regions = setup.regions(examples).to(config.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.stage_step, total, base=config.lr, warmup=config.warmup)
        loss, parts = loss_step(setup, state.stage, examples, targets, regions, generator)
        state.count_cw(parts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.stage_step += 1
        state.global_step += 1
        state.loss_sum += loss.item()
        state.loss_count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        _periodic(setup, state, optimizer, generator, total)
    bar.close()


def _periodic(setup: Setup, state: TrainerState, optimizer, generator, total: int) -> None:
    config, step = setup.config, state.stage_step
    if state.stage == "task" and config.eval_every and step % config.eval_every == 0 \
            and step < total:
        record(state, validate(setup))
    if config.checkpoint_every and state.global_step % config.checkpoint_every == 0:
        save_checkpoint(Path(config.out), setup, state, optimizer, generator)


def record(state: TrainerState, evaluation: dict[str, float] | None) -> None:
    """Append the mean loss since the last record (and a validation result) to the history."""
    entry = {"stage": state.stage, "step": state.stage_step, "global_step": state.global_step,
             "loss": state.loss_sum / max(state.loss_count, 1)}
    if evaluation is not None:
        entry["eval"] = evaluation
    state.history.append(entry)
    state.loss_sum, state.loss_count = 0.0, 0


def validate(setup: Setup) -> dict[str, float] | None:
    if not setup.eval_examples:
        return None
    config = setup.config
    logits = predict_logits(setup.student, setup.eval_examples,
                            regions=setup.eval_regions or setup.regions,
                            batch_size=config.batch_size, device=config.device)
    return without_counts(score_logits(config.dataset, setup.eval_examples, logits,
                                       getattr(setup.student, "answers", None)))


def run_metrics(setup: Setup, state: TrainerState) -> dict[str, Any]:
    """metrics.json (docs/architecture.md): the history and the final validation."""
    config = setup.config
    final = state.history[-1].get("eval") if state.history else None
    evaluation = {config.eval_split: final} if final is not None else {}
    return {"run": Path(config.out).name, "dataset": config.dataset, "method": config.method,
            "student": config.student, "teachers": setup.teachers,
            "shots": config.per_category, "seed": config.seed, "status": "complete",
            "history": state.history, "eval": evaluation, "cw_fired": state.cw_fired(),
            "provenance": setup.provenance}


def _stage_done(current: str, name: str) -> bool:
    order = ["af", "task", "done"]
    return order.index(current) > order.index(name)


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train a student as `config` says and write the run directory; returns metrics.json."""
    return train(setup(config))
