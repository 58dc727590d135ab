"""`TrainConfig`: everything a training run depends on (the single source of truth)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from madcache.core.config import config_from_dict
from madcache.core.errors import ConfigError
from madcache.method.methods import get_method
from madcache.train.precision import PRECISIONS
from madcache.train.tracking import TRACKERS


@dataclass
class TrainConfig:
    """Everything a training run depends on. CLI flags and TOML files only supply values."""

    dataset: str
    root: str
    out: str
    method: str = "baseline"
    cache: str | None = None              # teacher-target cache (optional for baseline)
    regions: str | None = None            # region feature store of the training split
    eval_regions: str | None = None       # ... of the eval split (None: `regions`)
    split: str = "train"                  # the training split
    eval_split: str | None = "val"
    read_options: dict[str, Any] = field(default_factory=dict)
    student: str = "single-stream"
    student_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    per_category: int | None = None       # low-shot: K examples per category (with seed)
    split_file: str | None = None         # low-shot: a saved split (overrides per_category)
    epochs: int = 1
    max_steps: int | None = None          # task-stage steps (overrides epochs)
    batch_size: int = 16
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup: float = 0.1                   # fraction of a stage's steps spent warming up
    w: float = 0.05                       # MD weight
    m: int = 2                            # TS: words per text
    w_prime: float | None = None          # MAD weight; None -> w (2 + m) / 2
    teacher_logits: str | None = None     # CW logits name; None -> the cache's default
    af_epochs: int = 0                    # adaptive finetuning epochs (stage 1)
    eval_every: int = 0                   # task steps between validations (0: at the end only)
    checkpoint_every: int = 0             # steps between checkpoints (0: at the end only)
    chunk_size: int = 4096                # full-data runs: examples loaded per chunk
    resume: bool = False
    device: str = "cpu"
    grad_accum: int = field(default=1, metadata={"help": (
        "Micro-batches per optimizer step on each process: the same global --batch-size in "
        "N smaller pieces (less memory, same update).")})
    grad_clip: float | None = field(default=None, metadata={"help": (
        "Clip the global gradient norm to this value before each step (default: off).")})
    precision: str | None = field(default=None, metadata={"help": (
        "fp32, or bf16 autocast (default: bf16 on CUDA, fp32 on the CPU). TF32 matmuls are "
        "on for CUDA either way.")})
    prefetch: int = field(default=4, metadata={"help": (
        "Batches the loader thread prepares ahead of the training step.")})
    report_to: str = field(default="none", metadata={"help": (
        "Also log scalars to: none, or tensorboard (<run>/tensorboard/; metrics.json stays "
        "the record).")})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.m < 0 or self.epochs < 0 or self.af_epochs < 0:
            raise ConfigError("batch_size must be >= 1 and m, epochs, af_epochs >= 0")
        if self.grad_accum < 1 or self.prefetch < 1:
            raise ConfigError(f"grad_accum and prefetch must be >= 1, got {self.grad_accum} "
                              f"and {self.prefetch}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0 (or unset), got {self.grad_clip}")
        if self.precision not in (None, *PRECISIONS):
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        TRACKERS.get(self.report_to)  # unknown names list the valid ones
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        get_method(self.method)  # unknown names list the valid ones

    @property
    def resolved_w_prime(self) -> float:
        """w' = w (2 + m) / 2 unless set (MAD.md, TS)."""
        return self.w * (2 + self.m) / 2 if self.w_prime is None else self.w_prime

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, values, noun="training config key")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Values from a TOML file (a `[train]` table or the top level), then `overrides`."""
        data = tomllib.loads(Path(path).read_text())
        data = data.get("train", data)
        return cls.from_dict({**data, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
