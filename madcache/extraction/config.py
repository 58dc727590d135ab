"""`ExtractConfig`: the single source of truth for one extraction run (CLI flags only fill it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from madcache.cache.location import is_url
from madcache.core.config import config_from_dict
from madcache.core.errors import ConfigError
from madcache.data import DATASETS

DTYPES = ("float16", "float32")
FORMATS = ("zarr", "hdf5")


@dataclass(frozen=True)
class TeacherSpec:
    """One role's teacher: a registry name and an optional local checkpoint file."""

    name: str
    checkpoint: Path | None = None


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what `extract` computes and where it writes it.

    Teachers: `teacher` sets both the vision and the text teacher (`checkpoint` is its weights);
    `vision_teacher` / `text_teacher` override one role. `relevance_model` is the joint-space
    (CLIP-style) model that scores visual relevance and the zero-shot logits; by default the
    vision or text teacher when it is joint-space. Without one, those targets are unavailable.

    `forward_batch` (rows per teacher forward) is in the fingerprint; `batch_size` (rows per
    worker job, rounded up to whole forward batches), `workers`, `device`, `rank` and
    `world_size` only change how fast a cache is built, never its values.
    """

    dataset: str
    root: Path
    split: str
    teacher: str | None = None
    checkpoint: Path | None = None
    vision_teacher: str | None = None
    vision_checkpoint: Path | None = None
    text_teacher: str | None = None
    text_checkpoint: Path | None = None
    relevance_model: str | None = None
    relevance_checkpoint: Path | None = None
    out: str | Path | None = None      # a directory, or an object-store URL (s3://...)
    format: Literal["zarr", "hdf5"] = "zarr"
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = 64
    forward_batch: int = 64
    workers: int = 0
    shard_size: int = 1024
    limit: int | None = None
    device: str = "cpu"
    force: bool = False
    skip_bad: bool = False
    read_options: dict[str, Any] = field(default_factory=dict)
    yake_max_ngram: int = 3
    yake_top: int = 20
    yake_language: str = "en"
    protocol: str | None = None
    default_logits: str | None = None
    answer_vocab: Path | None = None
    answer_vocab_size: int = 3129
    answer_top_k: int = 10
    sentence_encoder: Path | None = None
    progress: bool = True
    rank: int | None = None           # None: torchrun's RANK, else SLURM_ARRAY_TASK_ID, else 0
    world_size: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ExtractConfig":
        """Checked values (`madcache.core.config`): a wrong type names the option."""
        return config_from_dict(cls, values, noun="extract option")

    def __post_init__(self) -> None:
        for name in ("root", "out", "checkpoint", "vision_checkpoint", "text_checkpoint",
                     "relevance_checkpoint", "answer_vocab", "sentence_encoder"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path) and not is_url(value):
                object.__setattr__(self, name, Path(value).expanduser())
        self._validate()

    def _validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name in ("batch_size", "forward_batch", "shard_size", "answer_top_k",
                     "answer_vocab_size", "yake_max_ngram", "yake_top"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.vision_spec is None or self.text_spec is None:
            raise ConfigError("name the teachers: --teacher NAME, or both --vision-teacher and "
                              "--text-teacher")
        from madcache.extraction.protocols import PROTOCOLS

        PROTOCOLS.get(self.task_protocol)  # an unknown dataset or protocol lists the valid ones

    @property
    def vision_spec(self) -> TeacherSpec | None:
        return self._spec(self.vision_teacher, self.vision_checkpoint)

    @property
    def text_spec(self) -> TeacherSpec | None:
        return self._spec(self.text_teacher, self.text_checkpoint)

    @property
    def relevance_spec(self) -> TeacherSpec | None:
        """The explicitly named relevance model (None: choose a joint-space teacher later)."""
        if self.relevance_model is None:
            return None
        return self._spec(self.relevance_model, self.relevance_checkpoint)

    def _spec(self, name: str | None, checkpoint: Path | None) -> TeacherSpec | None:
        """A role's teacher: its own name/checkpoint, else `--teacher` / `--checkpoint`."""
        if name is None:
            if self.teacher is None:
                return None
            return TeacherSpec(self.teacher, checkpoint or self.checkpoint)
        if checkpoint is None and name == self.teacher:
            checkpoint = self.checkpoint
        return TeacherSpec(name, checkpoint)

    @property
    def dataset_options(self) -> dict[str, Any]:
        """Reader options: the dataset spec's `extraction_options` (the built-in readers check
        that images exist at read time, so a missing image is a bad record, skipped under
        `skip_bad`), then `read_options`, which win."""
        return {**DATASETS.get(self.dataset).extraction_options, **self.read_options}

    @property
    def task_protocol(self) -> str:
        """The teacher-logit protocol (a name in `protocols.PROTOCOLS`): `protocol`, else the
        dataset spec's `teacher_logits`."""
        return self.protocol or DATASETS.get(self.dataset).teacher_logits

    @property
    def logits_default(self) -> str:
        """`default_logits`, else the protocol's (`Task.default_logits`)."""
        from madcache.extraction.protocols import PROTOCOLS

        return self.default_logits or PROTOCOLS.get(self.task_protocol).default_logits

    def teacher_set_name(self) -> str:
        """A path-safe name for the teacher set, e.g. `clip-vit-b16` or `vit-x+roberta-y`."""
        names = [self.vision_spec.name, self.text_spec.name]
        if self.relevance_model is not None:
            names.append(self.relevance_model)
        unique = list(dict.fromkeys(_slug(name) for name in names))
        return "+".join(unique)

    def output_path(self) -> Path | str:
        """`out` (a directory, or an object-store URL), else
        `cache/<dataset>/<split>/<teacher-set>`."""
        if self.out is not None:
            return self.out
        return Path("cache") / self.dataset / _slug(self.split) / self.teacher_set_name()


def _slug(name: str) -> str:
    """`vit:/models/vit-base` -> `vit-vit-base`; `openclip:ViT-B-32` -> `openclip-ViT-B-32`."""
    prefix, _, arg = name.partition(":")
    if arg:
        name = f"{prefix}-{Path(arg).stem or arg}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "teacher"
