"""`ExtractConfig`: the single source of truth for one extraction run (CLI flags only fill it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from madcache.cache.location import is_url
from madcache.core.config import MAX_THREADS, check_ranges, config_from_dict, field_types, setting
from madcache.core.errors import ConfigError
from madcache.core.progress import PROGRESS_HELP
from madcache.data import DATASETS

ImageDecode = Literal["exact", "crop-first", "tensor", "gpu"]  # extraction/images.py


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

    dataset: str = setting(names="dataset", help="A registered dataset.")
    root: Path = setting(existing_path=True, help="Dataset root (original files).")
    split: str = setting(help="The split to extract, e.g. train.")
    teacher: str | None = setting(None, names="teacher", help="Teacher for both towers.")
    checkpoint: Path | None = setting(None, existing_path=True, help="Local weights of --teacher.")
    vision_teacher: str | None = setting(
        None, names="teacher", help="Image teacher (overrides --teacher)."
    )
    vision_checkpoint: Path | None = setting(
        None, existing_path=True, help="Local weights of --vision-teacher."
    )
    text_teacher: str | None = setting(
        None, names="teacher", help="Text teacher (overrides --teacher)."
    )
    text_checkpoint: Path | None = setting(
        None, existing_path=True, help="Local weights of --text-teacher."
    )
    relevance_model: str | None = setting(
        None,
        names="teacher",
        help="Joint-space (CLIP) model for word relevance "
        "and logits; default: the CLIP teacher when "
        "one is used.",
    )
    relevance_checkpoint: Path | None = setting(
        None, existing_path=True, help="Local weights of --relevance-model."
    )
    out: str | Path | None = setting(
        None,
        metavar="PATH|s3://BUCKET/PREFIX",
        help="Cache directory or object-store URL [default: cache/<dataset>/<split>/<teachers>].",
    )
    format: Literal["zarr", "hdf5"] = setting("zarr", help="Storage format of the shards.")
    dtype: Literal["float16", "float32"] = setting("float16", help="Storage dtype of features.")
    batch_size: int = setting(
        64,
        minimum=1,
        help="Rows per worker job (rounded up to whole "
        "--forward-batch); never changes the cached "
        "values.",
    )
    forward_batch: int = setting(
        64, minimum=1, help="Rows per teacher forward (in the fingerprint: results depend on it)."
    )
    workers: int | None = setting(
        None,
        minimum=0,
        help="Worker processes for decoding, "
        "tokenising and YAKE (0: in-process) "
        "[default: on CUDA, this process's "
        "share of the cores but one; on the "
        "CPU, 0].",
    )
    threads: int = setting(
        1,
        minimum=1,
        maximum=MAX_THREADS,
        help="CPU threads of the teacher forward. Pinned: with more than one, "
        "a loaded machine changed the last bits of features "
        "(docs/guarantees.md).",
    )
    shard_size: int = setting(
        1024, minimum=1, help="About this many examples per shard (whole images)."
    )
    limit: int | None = setting(None, minimum=1, help="Keep the first N examples.")
    device: str = setting(
        "auto",
        help="auto (the GPU when there is one, cuda:LOCAL_RANK "
        "under torchrun, else the CPU), cpu, cuda or cuda:N; "
        "the manifest records the resolved one.",
    )
    force: bool = setting(False, help="Overwrite a cache built with another fingerprint.")
    skip_bad: bool = setting(False, help="Skip malformed records (listed in the manifest).")
    read_options: dict[str, Any] = setting(
        factory=dict,
        flag="read-option",
        deprecated=("option",),
        help="A dataset reader option (repeatable), e.g. "
        "annotations=FILE for VCR; VALUE is parsed as "
        "JSON when it can be.",
    )
    image_decode: ImageDecode = setting(
        "exact",
        help="Image path: exact (PIL in the workers, bit-identical), crop-first (PIL resizes "
        "only the centre-crop box), tensor (PIL decodes, torchvision resizes, in the workers) "
        "or gpu (workers read bytes; decode and resize on --device). All but exact move a few "
        "pixels by a grey level or two and are in the fingerprint (docs/extraction.md).",
    )
    yake_max_ngram: int = setting(3, minimum=1, help="YAKE: the longest keyword, in words.")
    yake_top: int = setting(20, minimum=1, help="YAKE: keywords kept per text.")
    yake_language: str = setting("en", help="YAKE: the language of its stop-word list.")
    protocol: str | None = setting(
        None,
        names="protocol",
        help="Teacher-logit protocol [default: the dataset spec's `teacher_logits`].",
    )
    default_logits: str | None = setting(
        None,
        help="Logits used for confidence weighting [default: the protocol's, docs/extraction.md].",
    )
    answer_vocab: Path | None = setting(
        None,
        existing_path=True,
        help="VQA answer vocabulary (.txt or .json) [default: "
        "ROOT/answers.txt, else the train split's most "
        "frequent answers].",
    )
    answer_vocab_size: int = setting(
        3129,
        minimum=1,
        help="VQA without a vocabulary file: this many most frequent answers of the train split.",
    )
    answer_top_k: int = setting(
        10,
        minimum=1,
        help="VQA: candidate answers per question (prefiltered by the sentence encoder).",
    )
    sentence_encoder: Path | None = setting(
        None,
        existing_path=True,
        help="Sentence encoder directory for VQA answer prefiltering [default: MiniLM].",
    )
    progress: bool = setting(True, help=PROGRESS_HELP)
    rank: int | None = setting(
        None,
        minimum=0,
        help="This process's rank [default: torchrun's RANK, else "
        "SLURM_ARRAY_TASK_ID, else 0]; rank R extracts the shards "
        "with index % W == R.",
    )
    world_size: int | None = setting(
        None,
        minimum=1,
        help="Number of ranks [default: torchrun's WORLD_SIZE, else "
        "SLURM_ARRAY_TASK_COUNT, else 1].",
    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExtractConfig:
        """Checked values (`madcache.core.config`): a wrong type names the option."""
        return config_from_dict(cls, values, noun="extract option")

    def __post_init__(self) -> None:
        for name in (
            "root",
            "out",
            "checkpoint",
            "vision_checkpoint",
            "text_checkpoint",
            "relevance_checkpoint",
            "answer_vocab",
            "sentence_encoder",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path) and not is_url(value):
                object.__setattr__(self, name, Path(value).expanduser())
        self._validate()

    def _validate(self) -> None:
        # also when built in Python, not from values
        for name in ("format", "dtype", "image_decode"):
            choices = get_args(field_types(ExtractConfig)[name])
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}"
                )
        check_ranges(self)
        if self.vision_spec is None or self.text_spec is None:
            raise ConfigError(
                "name the teachers: --teacher NAME, or both --vision-teacher and --text-teacher"
            )
        from madcache.extraction.protocols import PROTOCOLS

        task = PROTOCOLS.get(self.task_protocol)  # an unknown name lists the valid ones
        if self.default_logits is not None and self.default_logits not in task.logit_names:
            raise ConfigError(
                f"--default-logits {self.default_logits!r}: protocol "
                f"'{self.task_protocol}' writes "
                f"{', '.join(task.logit_names) or 'no logits'}; pass one of them"
            )
        languages = yake_languages()
        if self.yake_language not in languages:
            raise ConfigError(
                f"--yake-language {self.yake_language!r}: YAKE has no stop-word "
                f"list for it (without one, stop words would score as keywords); "
                f"pass one of {', '.join(languages)}"
            )

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
        """`default_logits`, else the protocol's (`LogitProtocol.default_logits`)."""
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


def yake_languages() -> list[str]:
    """The languages of the stop-word lists the installed yake ships (`stopwords_<xx>.txt`;
    not its `noLang` fallback, which holds no language's stop words)."""
    from importlib.resources import files

    found = files("yake").joinpath("core", "StopwordsList")
    names = (
        p.name[len("stopwords_") : -len(".txt")]
        for p in found.iterdir()
        if p.name.startswith("stopwords_") and p.name.endswith(".txt")
    )
    return sorted(name for name in names if name != "noLang")


def _slug(name: str) -> str:
    """`vit:/models/vit-base` -> `vit-vit-base`; `openclip:ViT-B-32` -> `openclip-ViT-B-32`."""
    prefix, _, arg = name.partition(":")
    if arg:
        name = f"{prefix}-{Path(arg).stem or arg}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "teacher"
