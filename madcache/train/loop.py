"""The training loop: a student, cached teacher targets, a method (docs/method.md).

Reads top to bottom: `TrainConfig` (train/config.py) -> `setup` (train/setup.py: examples,
low-shot split, cached targets, regions, student, projections) -> `train` (the stages the
method has: AF, then the task; checkpoints; periodic validation) -> the run directory of
docs/architecture.md. Batches come from the data pipeline (train/stream.py), read and tokenised
ahead of the step. The data order is a pure function of (seed, stage, epoch) and every random
draw of a step of (seed, stage, step, rank, micro-batch), so a resumed run ends with the same
weights and metrics as an uninterrupted one.

Under torchrun every process runs this loop on its share of each global batch; DDP averages the
gradients (train/distributed.py) and rank 0 alone writes the run directory (docs/training.md).

This package never imports a teacher (madcache.teachers) or open_clip: everything a loss needs
from a teacher comes from the cache.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from madcache.core.errors import ConfigError, RunDirectoryError
from madcache.core.io import write_json, writing
from madcache.data.metrics import score_logits, without_counts
from madcache.students.base import Preparer, to_device
from madcache.students.predict import STUDENT_DIR, predict_logits
from madcache.train.checkpoint import CHECKPOINT, TrainerState, load_checkpoint, save_checkpoint
from madcache.train.config import TrainConfig
from madcache.train.data import DataSource, derive_seed
from madcache.train.distributed import (Dist, TrainModule, contiguous_share, current, gather,
                                        init_distributed, shutdown, sum_across, sync_context,
                                        wrap)
from madcache.train.precision import autocast, configure_matmuls, resolve_precision
from madcache.train.rundir import (METRICS, RESUMABLE_NOTE, check_resume, open_run_dir,
                                   record_run, run_inputs)
from madcache.train.setup import Setup, setup
from madcache.train.step import loss_step
from madcache.train.stream import Batch, Layout, StageStream
from madcache.train.tracking import Tracker, open_tracker


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


@dataclass
class Run:
    """What the stages of one `train` call share."""

    setup: Setup
    model: nn.Module                  # TrainModule, under DDP when there are several processes
    optimizer: torch.optim.Optimizer
    state: TrainerState
    where: Dist
    precision: str
    tracker: Tracker
    data: dict[str, dict[str, Any]] = field(default_factory=dict)   # per stage: reads, waits


def train(setup: Setup) -> dict[str, Any]:
    """Run (or resume) all stages, then validate and write metrics.json. Returns the metrics."""
    config, run_dir, where = setup.config, Path(setup.config.out), current()
    precision = resolve_precision(config.precision, config.device)
    configure_matmuls(config.device)
    state = TrainerState(stage=stages(setup)[0][0], world_size=where.world_size,
                         precision=precision)
    optimizer = make_optimizer(setup)
    if config.resume:
        check_resume(run_dir, config.to_dict(), run_inputs(setup.provenance))
        if (run_dir / CHECKPOINT).exists():
            state = resumed_state(load_checkpoint(run_dir, setup, optimizer), where, precision)
    if where.is_main:
        record_run(run_dir, config.to_dict(), run_inputs(setup.provenance))
    tracker = open_tracker(config.report_to if where.is_main else "none", run_dir,
                           start_step=state.global_step)
    run = Run(setup, wrap(TrainModule(setup, loss_step), where, config.device), optimizer,
              state, where, precision, tracker)
    try:
        for name, source, total in stages(setup):
            if _stage_done(state.stage, name):
                continue
            if state.stage != name:
                state.stage, state.stage_step, run.optimizer = name, 0, make_optimizer(setup)
            run_stage(run, source, total)
            record(run, validate(setup, where) if name == "task" else None)
    finally:
        tracker.close()
    state.stage = "done"
    metrics = run_metrics(setup, state, training_summary(run))
    if where.is_main:
        with writing(run_dir, error=RunDirectoryError, then=RESUMABLE_NOTE):
            save_checkpoint(run_dir, setup, state, run.optimizer)
            setup.save_student(setup.student, run_dir / STUDENT_DIR)
            write_json(run_dir / METRICS, metrics)
    return metrics


def resumed_state(state: TrainerState, where: Dist, precision: str) -> TrainerState:
    """A checkpoint's state, continued by this job. Its world size may differ (the global batch
    and the data order do not depend on it; dropout draws do, per rank); its precision may not."""
    if state.precision != precision:
        raise ConfigError(f"--resume: this run trained in {state.precision} and would continue in "
                          f"{precision}; pass --precision {state.precision}")
    if state.world_size != where.world_size and where.is_main:
        print(f"resuming a run trained by {state.world_size} process(es) with "
              f"{where.world_size}: same global batches, dropout draws differ", file=sys.stderr)
    state.world_size = where.world_size
    return state


def run_stage(run: Run, source: DataSource, total: int) -> None:
    """Train one stage from `state.stage_step` to `total` steps."""
    setup, state, config = run.setup, run.state, run.setup.config
    if state.stage_step >= total:
        return
    setup.student.train()
    layout = Layout(run.where.rank, run.where.world_size, config.grad_accum)
    stream = StageStream(source, preparer=Preparer(setup.student), regions=setup.regions,
                         seed=config.seed, stage=state.stage, batch_size=config.batch_size,
                         start=state.stage_step, stop=total, layout=layout,
                         depth=config.prefetch,
                         pin=config.device.startswith("cuda"))
    bar = tqdm(total=total, initial=state.stage_step, desc=f"{state.stage} ({config.method})",
               disable=None if run.where.is_main else True)
    started, steps = time.perf_counter(), 0
    with stream as batches:
        while state.stage_step < total:
            waited = stream.wait_s
            batch = next(batches)
            lr = lr_at(state.stage_step, total, base=config.lr, warmup=config.warmup)
            parts = train_step(run, batch, lr)
            state.count_cw(parts)
            state.stage_step += 1
            state.global_step += 1
            state.loss_sum += parts["loss"]
            state.loss_count += 1
            steps += 1
            run.tracker.scalars({**{f"{state.stage}/{k}": v for k, v in logged(parts).items()},
                                 f"{state.stage}/lr": lr,
                                 f"{state.stage}/data_wait_s": stream.wait_s - waited},
                                state.global_step)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
            _periodic(run, total)
    bar.close()
    elapsed = time.perf_counter() - started
    run.data[state.stage] = {"steps": steps, "rows_read": gather(stream.rows_read, run.where),
                             "data_wait_share": round(stream.wait_s / max(elapsed, 1e-9), 4)}


def train_step(run: Run, batch: Batch, lr: float) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches of a global batch. Each micro-batch's
    loss is weighted by its share of the global batch (x world size, as DDP averages over ranks),
    so the update equals one process's on the whole batch; the gradients are all-reduced with the
    last micro-batch, clipped and applied. Returns the loss terms as global-batch means, and
    CW's counts (`cw_fired`, `cw_seen`) as global-batch totals."""
    setup, config, state = run.setup, run.setup.config, run.state
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    sums: dict[str, float] = {}
    last = len(batch.micro) - 1
    for i, micro in enumerate(batch.micro):
        generator = seed_draws(config.seed, state.stage, batch.step, run.where.rank, i)
        targets = to_device(micro.targets, config.device, non_blocking=True)
        inputs = to_device(micro.inputs, config.device, non_blocking=True)
        with sync_context(run.model, i == last):
            with autocast(run.precision, config.device):
                loss, parts = run.model(state.stage, micro.examples, targets, inputs, generator)
            (loss * (micro.weight * run.where.world_size)).backward()
        for key, value in {**parts, "loss": loss.item()}.items():
            sums[key] = sums.get(key, 0.0) + (value if key in COUNTS else value * micro.weight)
    sums = sum_across(sums, run.where)
    if config.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(_trainables(setup), config.grad_clip)
        sums["grad_norm"] = norm.item()
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return sums


COUNTS = ("cw_fired", "cw_seen")       # loss parts that add up over a batch (not means)


def logged(parts: dict[str, float]) -> dict[str, float]:
    """A step's scalars for the tracker: CW's counts become its firing rate."""
    out = {k: v for k, v in parts.items() if k not in COUNTS}
    if parts.get("cw_seen"):
        out["cw_fired"] = parts["cw_fired"] / parts["cw_seen"]
    return out


def seed_draws(seed: int, stage: str, step: int, rank: int, micro: int) -> torch.Generator:
    """Seed one micro-batch's random draws from (seed, stage, step, rank, micro): dropout through
    the global RNG, AF masks and pairings through the returned CPU generator. No RNG state needs
    checkpointing, and a resumed run draws exactly what an uninterrupted one did."""
    torch.manual_seed(derive_seed(seed, stage, step, rank, micro, "dropout"))
    return torch.Generator().manual_seed(derive_seed(seed, stage, step, rank, micro, "draws"))


def _periodic(run: Run, total: int) -> None:
    config, state = run.setup.config, run.state
    if state.stage == "task" and config.eval_every and state.stage_step % config.eval_every == 0 \
            and state.stage_step < total:
        record(run, validate(run.setup, run.where))
    if config.checkpoint_every and state.global_step % config.checkpoint_every == 0 \
            and run.where.is_main:
        with writing(config.out, error=RunDirectoryError, then=RESUMABLE_NOTE):
            save_checkpoint(Path(config.out), run.setup, state, run.optimizer)


def record(run: Run, evaluation: dict[str, float] | None) -> None:
    """Append the mean loss since the last record (and a validation result) to the history."""
    state = run.state
    entry = {"stage": state.stage, "step": state.stage_step, "global_step": state.global_step,
             "loss": state.loss_sum / max(state.loss_count, 1)}
    if evaluation is not None:
        entry["eval"] = evaluation
        split = run.setup.config.eval_split
        run.tracker.scalars({f"eval/{split}/{k}": v for k, v in evaluation.items()},
                            state.global_step)
    state.history.append(entry)
    state.loss_sum, state.loss_count = 0.0, 0


def validate(setup: Setup, where: Dist = Dist()) -> dict[str, float] | None:
    """Score the eval split: each rank predicts its contiguous share, the logits are gathered in
    order, and every rank computes the same metrics."""
    if not setup.eval_examples:
        return None
    config = setup.config
    share = contiguous_share(setup.eval_examples, where)
    logits = predict_logits(setup.student, share, regions=setup.eval_regions or setup.regions,
                            batch_size=config.batch_size, device=config.device)
    parts = [part for part in gather(logits, where) if part.numel()]
    return without_counts(score_logits(config.dataset, setup.eval_examples, torch.cat(parts),
                                       getattr(setup.student, "answers", None)))


def training_summary(run: Run) -> dict[str, Any]:
    """How this run trained: metrics.json["training"] (the data figures cover this call)."""
    config, world = run.setup.config, run.where.world_size
    per_rank = math.ceil(config.batch_size / world)
    return {"world_size": world, "batch_size": config.batch_size, "per_rank_batch": per_rank,
            "grad_accum": config.grad_accum,
            "micro_batch": math.ceil(per_rank / config.grad_accum),
            "precision": run.precision, "device": config.device, "data": run.data}


def run_metrics(setup: Setup, state: TrainerState, training: dict[str, Any]) -> dict[str, Any]:
    """metrics.json (docs/architecture.md): the history and the final validation."""
    config = setup.config
    final = state.history[-1].get("eval") if state.history else None
    evaluation = {config.eval_split: final} if final is not None else {}
    return {"run": Path(config.out).name, "dataset": config.dataset, "method": config.method,
            "student": config.student, "teachers": setup.teachers,
            "shots": config.per_category, "seed": config.seed, "status": "complete",
            "history": state.history, "eval": evaluation, "cw_fired": state.cw_fired(),
            "training": training, "provenance": setup.provenance}


def _stage_done(current: str, name: str) -> bool:
    order = ["af", "task", "done"]
    return order.index(current) > order.index(name)


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train a student as `config` says and write the run directory; returns metrics.json.
    Under torchrun, joins the process group first (train/distributed.py)."""
    started = init_distributed(config.device)
    try:
        if current().is_main:
            open_run_dir(config)
        return train(setup(config))
    finally:
        shutdown(started)
