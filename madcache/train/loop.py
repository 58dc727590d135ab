"""The training loop: a student, cached teacher targets, a method (docs/method.md).

Read it top to bottom: `run_training` (the entry point) -> `train` (the stages the method has:
AF, then the task; checkpoints; validation) -> `run_stage` (one stage's steps, their figures
in a `StepMeter`) -> `train_step` (one optimizer step over this process's micro-batches) ->
`StageLoss` (one micro-batch's loss, composed from the method's registry entry: the module DDP
wraps). `build_setup` (train/setup.py) reads the data, the low-shot split and the cache and
builds the student; batches come from the data pipeline (train/stream.py), read and tokenised
ahead of the step.

Reproducibility: the data order is a pure function of (seed, stage, epoch) and every random
draw of a step of (seed, stage, step, rank, micro-batch), so a resumed run ends with the same
weights and metrics as an uninterrupted one; torch's CPU thread count is pinned by `threads`
(recorded in inputs.json), so the numbers do not follow the machine's load (docs/guarantees.md).

Under torchrun every process runs this loop on its share of each global batch; DDP averages the
gradients (train/distributed.py) and rank 0 alone writes the run directory (docs/training.md).
This package never imports a teacher (madcache.teachers) or open_clip: everything a loss needs
from a teacher comes from the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from madcache.core.device import resolve_device
from madcache.core.errors import ConfigError, NonFiniteLossError, RunDirectoryError
from madcache.core.io import read_json, write_json, writing
from madcache.core.progress import progress
from madcache.core.ranks import Ranks
from madcache.data.metrics import score_logits, without_counts
from madcache.method.losses import TERMS, distillation_loss, task_loss
from madcache.method.methods import AF, COUNTS, STAGE_ORDER, TASK, logged, term_weights
from madcache.students.base import Preparer, to_device
from madcache.students.predict import predict_logits
from madcache.train import optim
from madcache.train.checkpoint import (
    CHECKPOINT,
    TrainerState,
    keep_if_best,
    load_checkpoint,
    restore_selected,
    save_checkpoint,
)
from madcache.train.config import TrainConfig
from madcache.train.data import DataSource, derive_seed
from madcache.train.distributed import (
    contiguous_share,
    current,
    gather,
    init_distributed,
    shutdown,
    sum_across,
    sync_context,
    wrap,
)
from madcache.train.optim import lr_at
from madcache.train.precision import autocast, configure_matmuls, resolve_precision
from madcache.train.preemption import PREEMPTED_EXIT, Preempted, StopFlag, watch_signals
from madcache.train.records import run_metrics, training_summary
from madcache.train.rundir import (
    METRICS,
    RESUMABLE_NOTE,
    check_resume,
    one_writer,
    open_run_dir,
    record_run,
    run_inputs,
    save_run_student,
)
from madcache.train.setup import Setup, pin_threads
from madcache.train.setup import setup as build_setup
from madcache.train.stream import Batch, Layout, MicroBatch, StageStream
from madcache.train.tracking import Tracker, open_tracker

# ----------------------------------------------------------------------------- entry points


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train a student as `config` says and write the run directory; returns metrics.json.
    Under torchrun, joins the process group first (train/distributed.py)."""
    pin_threads(config.threads)
    config = dataclasses.replace(config, device=resolve_device(config.device))
    started = init_distributed(config.device)
    is_main = current().is_main
    try:
        with one_writer(Path(config.out)) if is_main else contextlib.nullcontext():
            if is_main:
                open_run_dir(config)
            return train(build_setup(config))
    finally:
        shutdown(started)


@dataclass
class Training:
    """What the stages of one `train` call share."""

    setup: Setup
    model: nn.Module  # StageLoss, under DDP when there are several processes
    optimizer: torch.optim.Optimizer
    state: TrainerState
    ranks: Ranks  # this process's rank in the job (rank 0 of 1 alone)
    precision: str
    tracker: Tracker
    data_figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage
    stop: StopFlag = field(default_factory=StopFlag)  # set by SIGTERM/SIGUSR1/SIGUSR2
    stop_agreed: bool = False  # under DDP: some rank was signalled by this step
    saved_at: float = field(default_factory=time.monotonic)  # the last checkpoint (or start)


def train(setup: Setup) -> dict[str, Any]:
    """Run (or resume) all stages, then validate and write metrics.json. Returns the metrics."""
    setup.config = dataclasses.replace(setup.config, device=resolve_device(setup.config.device))
    config, run_dir, ranks = setup.config, Path(setup.config.out), current()
    precision = resolve_precision(config.precision, config.device)
    configure_matmuls(config.device)
    plans = stage_plans(setup)

    # Resume: the settings and inputs must be those the run recorded; the checkpoint holds the
    # weights, the optimizer moments and where in which stage the run was.
    state = TrainerState(stage=plans[0].name, world_size=ranks.world_size, precision=precision)
    optimizer = make_optimizer(setup)
    if config.resume:
        check_resume(run_dir, config.to_dict(), run_inputs(setup.provenance, device=config.device))
        if (run_dir / CHECKPOINT).exists():
            state = resumed_state(load_checkpoint(run_dir, setup, optimizer), ranks, precision)
        finished = finished_metrics(run_dir, state)
        if finished is not None:
            return finished
    if ranks.is_main:
        record_run(run_dir, config.to_dict(), run_inputs(setup.provenance, device=config.device))
    tracker = open_tracker(
        config.report_to if ranks.is_main else "none", run_dir, start_step=state.global_step
    )
    training = Training(
        setup,
        wrap(StageLoss(setup), ranks, config.device),
        optimizer,
        state,
        ranks,
        precision,
        tracker,
    )

    # The stages in order (AF, then the task). What the task stage inherits from AF: the
    # weights (encoder, embeddings, heads). What it does not: the optimizer (a fresh one, no
    # moments) and the schedule (its own warm-up and decay), as UNITER finetunes its
    # second-stage-pretrained checkpoint with a new optimizer (docs/method.md, "AF").
    try:
        with watch_signals() as training.stop:
            for plan in plans:
                if _stage_done(state.stage, plan.name):
                    continue
                if state.stage != plan.name:
                    start_stage_with_fresh_optimizer(training, plan.name)
                run_stage(training, plan)
                record(training, score_eval_split(setup, ranks) if plan.name == TASK else None)
    finally:
        tracker.close()
    restore_selected(run_dir, setup, state)  # select = best: that step's weights from here on

    # The finished run: final checkpoint, the inference student, metrics.json (rank 0).
    state.stage = "done"
    metrics = run_metrics(
        setup,
        state,
        training_summary(
            config, world=ranks.world_size, precision=precision, data_figures=training.data_figures
        ),
    )
    if setup.transfer is not None:  # how far distillation moved the features (held out)
        metrics["transfer"] = setup.transfer(
            setup.student, setup.projections, setup.eval_regions or setup.regions
        )
    if ranks.is_main:
        with writing(run_dir, error=RunDirectoryError, then=RESUMABLE_NOTE):
            save_checkpoint(run_dir, setup, state, training.optimizer)
            metrics.update(save_run_student(setup.save_student, setup.student, run_dir))
            write_json(run_dir / METRICS, metrics)
    return metrics


def finished_metrics(run_dir: Path, state: TrainerState) -> dict[str, Any] | None:
    """A resumed run that had already finished: its metrics.json as it is (with whatever
    `madcache eval` added), and nothing rewritten. None when there is training left."""
    if state.stage != "done" or not (run_dir / METRICS).is_file():
        return None
    metrics = read_json(
        run_dir / METRICS, error=RunDirectoryError, hint="delete it and run again with --resume"
    )
    if metrics.get("status") != "complete":
        return None
    print(f"--resume: {run_dir} is already complete; nothing to do", file=sys.stderr)
    return metrics


# ----------------------------------------------------------------------------- stages


class StagePlan(NamedTuple):
    """One stage of the run: its data, length and learning-rate schedule."""

    name: str  # "af" or "task"
    source: DataSource
    steps: int
    lr: float  # peak learning rate
    warmup: float  # fraction of `steps` spent warming up


def stage_plans(setup: Setup) -> list[StagePlan]:
    """The stages the method has, in order: AF (the whole training split, label-free; its own
    `af_*` length and schedule), then the task (`epochs` / `max_steps`, `lr`, `warmup`)."""
    config, plans = setup.config, []
    for name in setup.method.stage_names:
        if name == AF:
            source, epochs, max_steps = setup.af_source, config.af_epochs, config.af_max_steps
            lr, warmup = config.af_lr, config.af_warmup
        else:
            source, epochs, max_steps = setup.task_source, config.epochs, config.max_steps
            lr, warmup = config.lr, config.warmup
        steps = (
            max_steps
            if max_steps is not None
            else epochs * source.steps_per_epoch(config.batch_size)
        )
        plans.append(StagePlan(name, source, steps, lr, warmup))
    return plans


def make_optimizer(setup: Setup) -> torch.optim.Optimizer:
    """The `[train]` optimizer (AdamW, UNITER's AdamW or SGD) over student + projections, in
    groups: weight decay or not (`no_decay`), the student's head at `head_lr_mul`
    (train/optim.py)."""
    return optim.make_optimizer(setup.student, setup.projections, setup.config)


def start_stage_with_fresh_optimizer(training: Training, name: str) -> None:
    """Enter stage `name` at its step 0 with a new optimizer: no optimizer state (Adam's
    moments, SGD's momentum) crosses stages."""
    training.state.stage, training.state.stage_step = name, 0
    training.optimizer = make_optimizer(training.setup)


def _trainables(setup: Setup) -> list[torch.nn.Parameter]:
    return list(setup.student.parameters()) + list(setup.projections.parameters())


def resumed_state(state: TrainerState, ranks: Ranks, precision: str) -> TrainerState:
    """A checkpoint's state, continued by this job. Its world size may differ (the global batch
    and the data order do not depend on it; dropout draws do, per rank); its precision may not."""
    if state.precision != precision:
        raise ConfigError(
            f"--resume: this run trained in {state.precision} and would continue in "
            f"{precision}; pass --precision {state.precision}"
        )
    if state.world_size != ranks.world_size and ranks.is_main:
        print(
            f"resuming a run trained by {state.world_size} process(es) with "
            f"{ranks.world_size}: same global batches, dropout draws differ",
            file=sys.stderr,
        )
    state.world_size = ranks.world_size
    return state


def run_stage(training: Training, plan: StagePlan) -> None:
    """Train one stage from `state.stage_step` to `plan.steps` steps."""
    setup, state, config = training.setup, training.state, training.setup.config
    if state.stage_step >= plan.steps:
        return
    setup.student.train()
    layout = Layout(training.ranks.rank, training.ranks.world_size, config.grad_accum)
    pipeline = StageStream(
        plan.source,
        preparer=Preparer(setup.student),
        regions=setup.regions,
        seed=config.seed,
        stage=state.stage,
        batch_size=config.batch_size,
        start=state.stage_step,
        stop=plan.steps,
        layout=layout,
        depth=config.prefetch,
        pin=config.device.startswith("cuda"),
    )
    bar = progress(
        total=plan.steps,
        initial=state.stage_step,
        unit="step",
        desc=f"{state.stage} ({config.method})",
        per_unit=config.batch_size,
        disable=not training.ranks.is_main,
    )
    meter, started = StepMeter(training, bar), time.perf_counter()
    with pipeline as batches:
        while state.stage_step < plan.steps:
            waited = pipeline.wait_s
            batch = next(batches)
            lr = lr_at(
                state.stage_step, plan.steps, base=plan.lr, warmup=plan.warmup, config=config
            )
            meter.add(train_step(training, batch, lr), lr=lr, waited=pipeline.wait_s - waited)
            _periodic(training, plan.steps)
    bar.close()
    elapsed = time.perf_counter() - started
    training.data_figures[state.stage] = {
        "steps": meter.steps,
        "rows_read": gather(pipeline.rows_read, training.ranks),
        "data_wait_share": round(pipeline.wait_s / max(elapsed, 1e-9), 4),
    }


@dataclass
class StepMeter:
    """A stage's running figures, one `add` per step: the step counters, the sums a history
    record averages (`record`), the counts of `COUNTS` per stage, the tracker and the bar."""

    training: Training
    bar: Any
    steps: int = 0

    def add(self, parts: dict[str, float], *, lr: float, waited: float) -> None:
        state, scalars = self.training.state, logged(parts)
        state.count_cw(parts)
        state.stage_step += 1
        state.global_step += 1
        state.loss_sum += parts["loss"]
        state.loss_count += 1
        for key, value in scalars.items():
            state.part_sums[key] = state.part_sums.get(key, 0.0) + value
        self.steps += 1
        self.training.tracker.scalars(
            {
                **{f"{state.stage}/{k}": v for k, v in scalars.items()},
                f"{state.stage}/lr": lr,
                f"{state.stage}/data_wait_s": waited,
            },
            state.global_step,
        )
        self.bar.set_postfix(loss=f"{parts['loss']:.4f}")
        self.bar.update(1)


# ----------------------------------------------------------------------------- one step

STOP = "_stop"  # ranks signalled at this step (never logged)


def train_step(training: Training, batch: Batch, lr: float) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches of a global batch, each micro-batch's
    loss from `StageLoss` (below). Returns the loss parts as global-batch means, and the counts
    of `COUNTS` (CW's) as totals."""
    config, state, ranks = training.setup.config, training.state, training.ranks
    optim.set_lr(training.optimizer, lr)  # x each group's lr_mul (the head's)

    # Forward + backward per micro-batch. Each loss is weighted by its share of the global
    # batch (x world size, as DDP averages over ranks), so the update equals one process's on
    # the whole batch; DDP all-reduces the gradients with the last micro-batch only.
    sums: dict[str, float] = {}
    last = len(batch.micro) - 1
    for i, micro in enumerate(batch.micro):
        generator = seed_draws(config.seed, state.stage, batch.step, ranks.rank, i)
        on_device = dataclasses.replace(
            micro,
            targets=to_device(micro.targets, config.device, non_blocking=True),
            inputs=to_device(micro.inputs, config.device, non_blocking=True),
        )
        with sync_context(training.model, i == last):
            with autocast(training.precision, config.device):
                loss, parts = training.model(
                    stage=state.stage, micro=on_device, generator=generator
                )
            (loss * (micro.weight * ranks.world_size)).backward()
        for key, value in {**parts, "loss": loss.item()}.items():
            sums[key] = sums.get(key, 0.0) + (value if key in COUNTS else value * micro.weight)
    if ranks.enabled:  # the ranks agree here, so all stop after the same step
        sums[STOP] = float(training.stop.requested)
    sums = sum_across(sums, ranks)
    training.stop_agreed = bool(sums.pop(STOP, 0.0))
    refuse_non_finite_loss(sums, batch, state.stage)

    # Clip (optional), apply, clear.
    if config.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(_trainables(training.setup), config.grad_clip)
        sums["grad_norm"] = norm.item()
    training.optimizer.step()
    training.optimizer.zero_grad(set_to_none=True)
    return sums


class StageLoss(nn.Module):
    """One micro-batch's loss: the student and the projections as one module, so that DDP
    registers every trainable parameter and the whole stage loss (AF's `pretrain_losses`
    included) runs inside the forward it wraps."""

    def __init__(self, setup: Setup) -> None:
        super().__init__()
        self.student, self.projections, self.setup = setup.student, setup.projections, setup

    def forward(
        self, *, stage: str, micro: MicroBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of `micro` in `stage` ("af" or "task"), as the method's registry entry
        composes it, and its parts for logging:

            task stage:  L_task        + weight * (the stage's terms)   (MAD.md: L_MD, L_MAD)
            af stage:    L_MLM + L_ITM + weight * (the stage's terms)   (MAD.md: L_AF)

        `weight` is w or w', or per instance (CW) as the stage says (`term_weights`). Nothing
        here names a method."""
        spec, config, student = self.setup.method.stage(stage), self.setup.config, self.student

        # 1. The stage's own loss: AF's label-free MLM + ITM (the student output only when the
        #    stage distils), or the task loss.
        if spec.name == AF:
            own = student.pretrain_losses(micro.inputs, micro.examples, generator)
            out = student(micro.inputs) if spec.terms else None
        else:
            out = student(micro.inputs)
            own = {"task": task_loss(student, out.logits, micro.examples)}
        base = sum(own.values(), torch.zeros((), device=next(iter(own.values())).device))

        # 2. The distillation terms, per instance [B]: L_dv, L_dt, L'_dt (method/losses.py).
        terms = {
            name: TERMS.get(name).compute(out, micro.targets, self.projections)
            for name in spec.terms
        }

        # 3. Their weight: w or w'; with CW, w_r per instance and its counts.
        weights, counts = term_weights(
            spec,
            out,
            micro.targets,
            w=config.w,
            m=config.m,
            w_prime=config.w_prime,
            w_prime_rule=config.w_prime_rule,
        )
        loss = distillation_loss(base, list(terms.values()), weights)
        parts = {name: value.item() for name, value in own.items()} | counts
        parts["loss"] = loss.item()
        parts.update({name: term.mean().item() for name, term in terms.items()})
        return loss, parts


def refuse_non_finite_loss(parts: dict[str, float], batch: Batch, stage: str) -> None:
    """Stop the run, before the step is applied, when its loss is NaN or infinite: one line
    naming the step, the loss parts and the batch's first examples. The last checkpoint stays,
    and the run is not complete."""
    if math.isfinite(parts["loss"]):
        return
    shown = ", ".join(f"{k} {v:.4g}" for k, v in parts.items() if k not in COUNTS)
    ids = [ex.id for micro in batch.micro for ex in micro.examples][:3]
    raise NonFiniteLossError(
        f"{stage} step {batch.step}: the loss is not finite ({shown}); batch examples "
        f"{', '.join(map(repr, ids))}: check the cache and region store with `madcache cache "
        "verify`, or lower the learning rate; the run stopped without applying the step"
    )


def seed_draws(seed: int, stage: str, step: int, rank: int, micro: int) -> torch.Generator:
    """Seed one micro-batch's random draws from (seed, stage, step, rank, micro): dropout through
    the global RNG, AF masks and pairings through the returned CPU generator. No RNG state needs
    checkpointing, and a resumed run draws exactly what an uninterrupted one did."""
    torch.manual_seed(derive_seed(seed, stage, step, rank, micro, "dropout"))
    return torch.Generator().manual_seed(derive_seed(seed, stage, step, rank, micro, "draws"))


# ----------------------------------------------------------------------------- records


def _periodic(training: Training, total: int) -> None:
    """Every `eval_every` steps: a history record (the mean loss; in the task stage also a
    validation). A checkpoint every `checkpoint_every` steps, when `checkpoint_minutes` passed
    since the last one, and when a signal asked to stop (then `Preempted`: train/preemption.py).
    A checkpoint is a pure save: it never changes what the run computes."""
    config, state = training.setup.config, training.state
    if config.eval_every and state.stage_step % config.eval_every == 0 and state.stage_step < total:
        record(
            training,
            score_eval_split(training.setup, training.ranks) if state.stage == TASK else None,
        )
    # under DDP the step's agreed flag, not this rank's own (a signal may land in between)
    stop = training.stop_agreed if training.ranks.enabled else training.stop.requested
    every = config.checkpoint_every and state.global_step % config.checkpoint_every == 0
    timed = (
        config.checkpoint_minutes
        and time.monotonic() - training.saved_at >= config.checkpoint_minutes * 60
    )
    if (every or timed or stop) and training.ranks.is_main:
        with writing(config.out, error=RunDirectoryError, then=RESUMABLE_NOTE):
            save_checkpoint(Path(config.out), training.setup, state, training.optimizer)
        training.saved_at = time.monotonic()
    if stop:
        raise Preempted(
            f"stopped by {training.stop.signal or 'a signal to another rank'} "
            f"after {state.stage} step "
            f"{state.stage_step} (global step {state.global_step}); the checkpoint "
            f"in {config.out} is written: rerun with --resume to continue from it "
            f"(exit code {PREEMPTED_EXIT})"
        )


def score_eval_split(setup: Setup, ranks: Ranks = Ranks()) -> dict[str, float] | None:
    """Score the eval split: each rank predicts its contiguous share, the logits are gathered in
    order, and every rank computes the same metrics."""
    if not setup.eval_examples:
        return None
    config = setup.config
    share = contiguous_share(setup.eval_examples, ranks)
    logits = predict_logits(
        setup.student,
        share,
        regions=setup.eval_regions or setup.regions,
        batch_size=config.batch_size,
        device=config.device,
    )
    parts = [part for part in gather(logits, ranks) if part.numel()]
    return without_counts(
        score_logits(
            config.dataset,
            setup.eval_examples,
            torch.cat(parts),
            getattr(setup.student, "answers", None),
        )
    )


def record(training: Training, evaluation: dict[str, float] | None) -> None:
    """Append the mean loss and loss parts (MLM, ITM, task, dv, ...) since the last record (and a
    validation result) to the history."""
    state = training.state
    count = max(state.loss_count, 1)
    entry = {
        "stage": state.stage,
        "step": state.stage_step,
        "global_step": state.global_step,
        "loss": state.loss_sum / count,
        "parts": {k: v / count for k, v in state.part_sums.items() if k != "loss"},
    }
    if evaluation is not None:
        entry["eval"] = evaluation
        split = training.setup.config.eval_split
        training.tracker.scalars(
            {f"eval/{split}/{k}": v for k, v in evaluation.items()}, state.global_step
        )
    state.history.append(entry)
    state.loss_sum, state.loss_count, state.part_sums = 0.0, 0, {}
    if evaluation is not None:  # select = best: the weights of the best step so far
        keep_if_best(Path(training.setup.config.out), training.setup, state)


def _stage_done(current_stage: str, name: str) -> bool:
    order = (*STAGE_ORDER, "done")
    return order.index(current_stage) > order.index(name)
