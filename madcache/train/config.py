"""`TrainConfig`: everything a training run depends on (the single source of truth)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from madcache.core.config import config_from_dict
from madcache.core.errors import ConfigError
from madcache.method.methods import AF, METHOD_ORDER, check_w_prime_rule, get_method


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
    w_prime: float | None = None          # MAD weight w'; None -> by w_prime_rule
    w_prime_rule: str = "proportional"    # w' = w (2 + m) / 2; "per-feature": w (m + 2)
    teacher_logits: str | None = None     # CW logits name; None -> the cache's default
    af_epochs: int = 1                    # length of the AF stage, for methods that have one
    af_max_steps: int | None = None       # AF-stage steps (overrides af_epochs)
    eval_every: int = 0                   # task steps between validations (0: at the end only)
    checkpoint_every: int = 0             # steps between checkpoints (0: at the end only)
    chunk_size: int = 4096                # full-data runs: examples loaded per chunk
    resume: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.m < 0 or self.epochs < 0 or self.af_epochs < 0:
            raise ConfigError("batch_size must be >= 1 and m, epochs, af_epochs >= 0")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        method = get_method(self.method)  # unknown names list the valid ones
        check_w_prime_rule(self.w_prime_rule)
        af_length = self.af_epochs if self.af_max_steps is None else self.af_max_steps
        if method.stage(AF) is not None and af_length < 1:
            raise ConfigError(f"method '{self.method}' has an adaptive-finetuning stage: "
                              "af_epochs (or af_max_steps) must be >= 1; the methods without "
                              "AF are " + ", ".join(n for n in METHOD_ORDER
                                                     if get_method(n).stage(AF) is None))

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
