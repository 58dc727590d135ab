"""`TrainConfig`: everything a training run depends on (the single source of truth)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from madcache.core.config import MAX_THREADS, check_ranges, config_from_dict, read_toml, setting
from madcache.core.errors import ConfigError
from madcache.method.methods import AF, METHOD_ORDER, W_PRIME_RULES, get_method
from madcache.students import is_teacher
from madcache.train.precision import PRECISIONS
from madcache.train.tracking import TRACKERS

OPTIMIZERS = ("adamw", "uniter-adamw", "sgd")
NO_DECAY_RULES = ("ndim", "names", "none")
SCHEDULES = ("linear", "uniter-linear", "multistep")
WARMUP_METHODS = ("linear", "constant")
SELECTIONS = ("last", "best")  # which task step's weights a run ends with
# a run recorded before these settings existed resumes with their defaults (train/rundir.py)
SELECTION_KEYS = ("select", "select_metric")
# the optimizer and schedule settings; a run recorded before they existed trained with their
# defaults, so a missing key in its config.json means the default (rundir.check_resume)
OPTIMIZER_KEYS = (
    "optimizer",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "momentum",
    "no_decay",
    "head_lr_mul",
    "schedule",
    "lr_steps",
    "lr_factor",
    "warmup_method",
    "warmup_factor",
)


MAX_SEED = 2**63 - 1  # seeds are int64 wherever they reach torch
MAX_WORDS = 64  # TS pads every text's targets to m words: m beyond a text's length
# only costs memory ([chunk, C, m, D] floats)


@dataclass
class TrainConfig:
    """Everything a training run depends on. TOML files, `--set` and the `madcache train` flags
    (generated from these fields: name, type, help, range) only supply values."""

    dataset: str = setting(names="dataset", help="A registered dataset.")
    root: str = setting(help="Dataset root (its original files).")
    out: str = setting(help="Run directory, e.g. runs/NAME.")
    method: str = setting(
        "baseline",
        names="method",
        help="Training method: baseline, md, mad or an ablation (docs/method.md).",
    )
    cache: str | None = setting(None, help="Teacher-target cache (not needed for baseline).")
    regions: str | None = setting(None, help="Region feature store of the training split.")
    eval_regions: str | None = setting(
        None, help="Region feature store of the eval split (default: regions)."
    )
    eval_caches: dict[str, str] = setting(
        factory=dict,
        flag="eval-cache",
        metavar="SPLIT=PATH",
        help="The teacher cache of an evaluated split (repeatable): a distilling run reports on "
        "its eval split's how far its features moved toward the teacher's (metrics.json "
        "'transfer'); adapter-* evaluate on each.",
    )
    split: str = setting("train", help="Training split.")
    eval_split: str | None = setting("val", help="Validation split.")
    read_options: dict[str, Any] = setting(
        factory=dict, flag="read-option", help="A dataset reader option (repeatable)."
    )
    student: str = setting("single-stream", names="student", help="A registered student.")
    student_options: dict[str, Any] = setting(
        factory=dict, flag="student-option", help="A student option (repeatable; docs/students.md)."
    )
    seed: int = setting(
        0,
        minimum=0,
        maximum=MAX_SEED,
        help="Seed of the low-shot sample, the initialisation and the data order.",
    )
    per_category: int | None = setting(
        None, minimum=1, help="Low-shot: K examples per category (sampled with seed)."
    )
    split_file: str | None = setting(
        None, existing_file=True, help="A saved low-shot split (overrides per_category)."
    )
    epochs: int = setting(1, minimum=1, help="Task-stage epochs.")
    max_steps: int | None = setting(None, minimum=1, help="Task-stage steps (overrides epochs).")
    batch_size: int = setting(
        16, minimum=1, help="Examples per optimizer step, over all processes and micro-batches."
    )
    lr: float = setting(
        6e-5, above=0, help="Peak learning rate (of the optimizer and schedule below)."
    )
    weight_decay: float = setting(
        0.01, minimum=0, help="Weight decay (not on the parameters no_decay names)."
    )
    warmup: float = setting(
        0.1, minimum=0, below=1, help="Fraction of a stage's steps spent warming up."
    )
    optimizer: Literal[OPTIMIZERS] = setting(
        "adamw",
        help="adamw (torch AdamW), uniter-adamw "
        "(UNITER's AdamW: eps outside the "
        "bias correction, decay after the "
        "update) or sgd (torch SGD with "
        "momentum, as VL-BERT); "
        "docs/training.md.",
    )
    adam_beta1: float = setting(0.9, minimum=0, below=1, help="AdamW beta1 (both AdamWs).")
    adam_beta2: float = setting(
        0.999, minimum=0, below=1, help="AdamW beta2 (torch's 0.999; UNITER uses 0.98)."
    )
    adam_eps: float = setting(
        1e-8, above=0, help="AdamW epsilon (torch's 1e-8; UNITER's AdamW 1e-6)."
    )
    momentum: float = setting(0.9, minimum=0, below=1, help="SGD momentum.")
    no_decay: Literal[NO_DECAY_RULES] = setting(
        "ndim",
        help="Parameters without weight decay: ndim (fewer than 2 dims: biases, norms, "
        "learned vectors), names (UNITER's rule: names containing 'bias', "
        "'LayerNorm.bias' or 'LayerNorm.weight') or none (all decay, as VL-BERT).",
    )
    head_lr_mul: float = setting(
        1.0,
        above=0,
        help="Learning-rate multiplier of the student's "
        "task head (UNITER's lr_mul); the "
        "projections get the base rate.",
    )
    schedule: Literal[SCHEDULES] = setting(
        "linear",
        help="linear (warm-up, then linear decay to 0), uniter-linear (UNITER's "
        "get_lr_sched: the same, counted from step 1, ending at 1e-8) or "
        "multistep (VL-BERT's WarmupMultiStepLR); docs/training.md.",
    )
    lr_steps: list[float] = setting(
        factory=list,
        help="multistep: where the rate is multiplied "
        "by lr_factor, as fractions of a stage's "
        "steps, increasing, in (0, 1].",
    )
    lr_factor: float = setting(0.1, above=0, help="multistep: the factor at each of lr_steps.")
    warmup_method: Literal[WARMUP_METHODS] = setting(
        "linear",
        help="multistep: warm-up from warmup_factor x lr rising linearly to lr, or "
        "constant at warmup_factor x lr.",
    )
    warmup_factor: float = setting(
        0.0, minimum=0, help="multistep: the factor the warm-up starts from (WARMUP_FACTOR)."
    )
    w: float = setting(0.05, minimum=0, help="MD weight w.")
    m: int = setting(
        2,
        minimum=0,
        maximum=MAX_WORDS,
        help="Words selected per text (TS; at "
        f"most {MAX_WORDS}: the targets are padded to m words).",
    )
    w_prime: float | None = setting(
        None, minimum=0, help="MAD weight w' (default: by w_prime_rule)."
    )
    w_prime_rule: Literal[tuple(W_PRIME_RULES)] = setting(
        "proportional",
        help="w' = w (2 + m) / 2 (proportional) or w (m + 2) (per-feature); docs/method.md.",
    )
    teacher_logits: str | None = setting(
        None, help="Cached logits used for CW (default: the cache's)."
    )
    af_epochs: int = setting(
        1,
        minimum=0,
        help="Length of the adaptive-finetuning stage, in "
        "epochs of the training split, for methods "
        "that have one.",
    )
    af_max_steps: int | None = setting(
        None, minimum=1, help="AF-stage steps (overrides af_epochs)."
    )
    af_lr: float = setting(
        3e-5,
        above=0,
        help="Peak learning rate of the AF stage (AdamW). "
        "Default: UNITER's VCR second-stage "
        "pretraining, 3e-5 (docs/method.md).",
    )
    af_warmup: float = setting(
        0.1, minimum=0, below=1, help="Fraction of the AF stage's steps spent warming up."
    )
    eval_every: int = setting(
        0, minimum=0, help="Task steps between validations (0: at the end only)."
    )
    select: Literal[SELECTIONS] = setting(
        "last",
        help="The task step whose weights the run ends with (saved, evaluated, "
        "reported): last, or best: the step with the highest select_metric on the "
        "eval split, validated every eval_every task steps (early stopping when "
        "the eval split is a dev split held out of train; metrics.json "
        "'selection' records the curve and the step).",
    )
    select_metric: str | None = setting(
        None,
        help="select = best: the eval split's metric "
        "to maximise (default: the first the "
        "dataset scores, e.g. q2a for VCR).",
    )
    checkpoint_every: int = setting(
        0, minimum=0, help="Steps between checkpoints (0: by checkpoint_minutes, and at the end)."
    )
    checkpoint_minutes: float = setting(
        30.0,
        minimum=0,
        help="Also checkpoint when this many "
        "minutes passed since the last "
        "one (0: off). A pure save: "
        "never changes the result.",
    )
    chunk_size: int = setting(4096, minimum=1, help="Full-data runs: examples loaded per chunk.")
    resume: bool = setting(
        False,
        help="Continue the run in --out from its last checkpoint "
        "(settings that change the result must be the same).",
    )
    overwrite: bool = setting(
        False,
        help="Delete the run files madcache wrote in --out "
        "(config, checkpoint, metrics, student, ...) and train "
        "again; nothing else there is touched.",
    )
    device: str = setting(
        "auto",
        help="Torch device: auto (the GPU when there is one, "
        "cuda:LOCAL_RANK under torchrun, else the CPU), cpu, "
        "cuda or cuda:N. The resolved device is recorded in "
        "config.json and inputs.json.",
    )
    allow_device_change: bool = setting(
        False,
        help="--resume on another device kind (cpu <-> "
        "cuda) although its numbers differ from "
        "the run's (docs/guarantees.md).",
    )
    grad_accum: int = setting(
        1,
        minimum=1,
        help="Micro-batches per optimizer step on each "
        "process: the same global batch_size in N "
        "smaller pieces (less memory, same update).",
    )
    grad_clip: float | None = setting(
        None,
        above=0,
        help="Clip the global gradient norm to this value before each step (default: off).",
    )
    precision: Literal[PRECISIONS] | None = setting(
        None,
        help="fp32, or bf16 autocast "
        "(default: bf16 on CUDA, fp32 on the CPU). "
        "TF32 matmuls are on for CUDA either way.",
    )
    threads: int = setting(
        1,
        minimum=1,
        maximum=MAX_THREADS,
        help="CPU threads torch may use. Pinned (not the machine's core "
        "count) so that the same command gives the same numbers; "
        "recorded in inputs.json.",
    )
    prefetch: int = setting(
        4, minimum=1, help="Batches the loader thread prepares ahead of the training step."
    )
    report_to: str = setting(
        "none",
        names="tracker",
        help="Also log scalars to a tracker: none, tensorboard "
        "(<run>/tensorboard/), wandb (<run>/wandb/) or mlflow "
        "(MLFLOW_TRACKING_URI, else <run>/mlruns); "
        "metrics.json stays the record.",
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        TRACKERS.get(self.report_to)  # unknown names list the valid ones
        self._check_schedule()
        self._check_selection()
        method = get_method(self.method)  # unknown names list the valid ones
        if method.distils_words and self.m < 1:
            raise ConfigError(
                f"m: method '{self.method}' selects m words per text; m must be >= 1, got {self.m}"
            )
        af_length = self.af_epochs if self.af_max_steps is None else self.af_max_steps
        if method.stage(AF) is not None and af_length < 1:
            raise ConfigError(
                f"af_epochs: method '{self.method}' has an adaptive-finetuning "
                "stage, so af_epochs (or af_max_steps) must be >= 1; the methods "
                "without AF are "
                + ", ".join(n for n in METHOD_ORDER if get_method(n).stage(AF) is None)
            )
        if is_teacher(self.student) and (method.distils or method.stage(AF) is not None):
            raise ConfigError(
                f"method: student '{self.student}' is the teacher's own "
                "architecture (Direct Finetune): distilling a model into itself "
                f"is refused; use --method baseline, not '{self.method}'"
            )

    def _check_schedule(self) -> None:
        steps = self.lr_steps
        if steps and self.schedule != "multistep":
            raise ConfigError(
                f"lr_steps: only the multistep schedule decays in steps; set "
                f'schedule = "multistep" or drop lr_steps (schedule is '
                f"'{self.schedule}')"
            )
        if any(not 0 < f <= 1 for f in steps) or list(steps) != sorted(steps):
            raise ConfigError(
                f"lr_steps: fractions of a stage's steps, increasing, each in "
                f"(0, 1], got {list(steps)}"
            )

    def _check_selection(self) -> None:
        if self.select == "best" and not self.eval_every:
            raise ConfigError(
                "select: 'best' picks among the eval split's validations every "
                "eval_every task steps; set eval_every >= 1"
            )

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, where: str = "", table: str = "train"
    ) -> TrainConfig:
        """Checked values (`madcache.core.config`); errors name `table.key` after `where`."""
        return config_from_dict(cls, values, noun="training config key", where=where, table=table)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Values from a TOML file (a `[train]` table or the top level), then `overrides`."""
        data = read_toml(path, what="training config file")
        table = "train" if isinstance(data.get("train"), dict) else ""
        stray = [key for key, value in data.items() if table and not isinstance(value, dict)]
        if stray:
            raise ConfigError(
                f"{path}: {', '.join(stray)} stand(s) above the [train] table, "
                "where nothing reads them; move them into [train]"
            )
        values = {**(data["train"] if table else data), **overrides}
        return cls.from_dict(values, where=f"{path}: ", table=table)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
