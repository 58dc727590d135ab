"""What any vision-language student must expose for MAD, and the student registry.

A student scores `example.texts[c]` against the image's regions for every choice c, and exposes:
- task logits (VCR: one score per choice -> [B, 4]; SNLI-VE [B, 3]; VQA [B, V] over the vocabulary);
- V_s, the output at the first visual token ("img" token), and T_s, the output at the text CLS
  token, for each scored sequence;
- per-token text outputs with the character spans of its own tokens in `example.texts[c].text`,
  so per-word features can be pooled against the cached teacher words (word = char span);
- the adaptive-finetuning losses, without task labels. Their image-text matching must never use
  a choice as a positive (a wrong VCR answer or a contradicting SNLI-VE hypothesis is not true
  of the image): positives pair an image with its example's `label_free_text` (VCR/VQA question,
  SNLI-VE premise), negatives pair that text with another image; examples whose
  `label_free_text` is None take no part in ITM.
External students (a UNITER / VL-BERT port) implement this protocol: see docs/students.md.

Optional hooks (`Preparer`): a student with `tokenise(examples)` and `collate(items, regions)` is
tokenised once per example, by the training data pipeline, ahead of the step; any other student
is prepared whole per batch with `prepare`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from madcache.core.errors import ConfigError
from madcache.core.registry import Registry
from madcache.data.records import Example


@dataclass
class RegionInputs:
    """Visual inputs for a batch of images: region features + normalised boxes."""

    feat: torch.Tensor  # [B, R, Dr] float32
    boxes: torch.Tensor  # [B, R, 4] float32, (x1, y1, x2, y2) / (width, height)
    mask: torch.Tensor  # [B, R] bool: real region (False = padding)

    def to(self, device: str | torch.device) -> RegionInputs:
        return RegionInputs(self.feat.to(device), self.boxes.to(device), self.mask.to(device))


@dataclass
class PixelInputs:
    """Visual inputs of a student that reads the image itself (`visual_input = "pixels"`): the
    images as its own image processor prepared them, zero-padded to the batch's largest."""

    pixels: torch.Tensor  # [B, 3, H, W] float32
    mask: torch.Tensor  # [B, H, W] bool: real pixel (False = padding)

    def to(self, device: str | torch.device) -> PixelInputs:
        return PixelInputs(self.pixels.to(device), self.mask.to(device))


VisualInputs = RegionInputs | PixelInputs


@dataclass
class StudentOutput:
    logits: torch.Tensor  # [B, K]
    image_token: torch.Tensor  # [B, C, H]  V_s
    cls_token: torch.Tensor  # [B, C, H]  T_s
    text_tokens: torch.Tensor  # [B, C, L, H]
    token_spans: torch.Tensor  # [B, C, L, 2] long; (-1, -1) for special tokens and padding


@runtime_checkable
class Student(Protocol):
    """A student may also declare `visual_input = "pixels"` (its factory and its class): it then
    gets `PixelInputs` from its own `image_processor()` instead of `RegionInputs` from a region
    store (madcache/students/visual.py). Without it, a student reads regions.

    A student may also declare `head_prefixes`, the parameter-name prefixes of its task head
    (e.g. `("head.",)`): `--head-lr-mul` gives those parameters a multiple of the learning rate,
    as UNITER's `lr_mul` does its `vcr_output` (train/optim.py). Without it, it has no head to
    set apart and `head_lr_mul` must stay 1."""

    name: str  # its registry name (`student.json` records it)
    hidden_size: int
    task: str  # "multiple_choice" | "classification" | "multilabel"

    def prepare(self, examples: Sequence[Example], regions: VisualInputs) -> Mapping[str, Any]:
        """Tokenise texts and build model inputs for a batch (no teacher involved)."""
        ...

    def __call__(self, inputs: Mapping[str, Any]) -> StudentOutput: ...

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Adaptive-finetuning stage losses without task labels, e.g. {'mlm': .., 'itm': ..}:
        `inputs` is `prepare(examples, regions)`; ITM positives come only from
        `example.label_free_text` (see the module docstring). Random draws use `generator`."""
        ...

    def export_options(self, directory: Path) -> dict[str, Any]:
        """Options that make the factory rebuild this architecture (`save_student`); side files
        (a tokenizer) go into `directory`."""
        ...


def missing_members(student: object) -> list[str]:
    """The members of the `Student` protocol that `student` lacks."""
    members = [
        *Student.__annotations__,
        *(
            n
            for n, v in vars(Student).items()
            if callable(v) and (n == "__call__" or not n.startswith("_"))
        ),
    ]
    return sorted(n for n in members if not hasattr(student, n))


def check_student(student: object, name: str) -> None:
    """Refuse a student that does not implement the whole protocol, before any training step
    (`save_student` needs `name` and `export_options` at the end of a run)."""
    missing = missing_members(student)
    if missing:
        raise ConfigError(
            f"student '{name}' ({type(student).__name__}) does not implement the "
            f"Student protocol: missing {', '.join(missing)} "
            "(madcache/students/base.py, docs/students.md)"
        )


def task_logits(scores: torch.Tensor, task: str, batch: int, choices: int) -> torch.Tensor:
    """Head scores of the B x C sequences -> logits: [B, C] for multiple choice, else [B, K]."""
    if task == "multiple_choice":
        return scores.reshape(batch, choices)
    if choices != 1:
        raise ValueError(f"task {task} scores one text per example, got {choices}")
    return scores


def key_list(keys: Sequence[str], limit: int = 8) -> str:
    """Checkpoint keys for a one-line message: the first `limit`, then how many more."""
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def text_then_visual_output(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    *,
    task: str,
    batch: int,
    choices: int,
    length: int,
    token_spans: torch.Tensor,
) -> StudentOutput:
    """The output of a single-stream student whose B x C sequences hold their L text positions
    first and the visual ones right after (UNITER, VL-BERT, the transformers students): logits
    from the head's `scores`, V_s at the first visual position, T_s at the text [CLS]."""
    size = hidden.shape[-1]
    return StudentOutput(
        logits=task_logits(scores, task, batch, choices),
        image_token=hidden[:, length].reshape(batch, choices, size),
        cls_token=hidden[:, 0].reshape(batch, choices, size),
        text_tokens=hidden[:, :length].reshape(batch, choices, length, size),
        token_spans=token_spans.reshape(batch, choices, length, 2),
    )


class Preparer:
    """How the training data pipeline builds a student's inputs: `tokenise` once per example (in
    the loader thread, when a chunk is loaded), `collate` once per batch (ahead of the step).

    A student may provide both hooks:
    - `tokenise(examples) -> list`: one item per example (CPU, any type), e.g. token ids + spans;
    - `collate(items, regions) -> inputs`: a batch of items + its `RegionInputs` -> the inputs of
      `__call__`, as CPU tensors (the trainer moves them to the device);
    with `prepare(examples, regions)` equal to `collate(tokenise(examples), regions)` on the
    student's device. A student without them is prepared whole per batch: `tokenise` keeps the
    examples and `collate` calls `prepare`.
    """

    def __init__(self, student: Any) -> None:
        self.student = student
        self.split = callable(getattr(student, "tokenise", None)) and callable(
            getattr(student, "collate", None)
        )

    def tokenise(self, examples: Sequence[Example]) -> list[Any]:
        return self.student.tokenise(examples) if self.split else list(examples)

    def collate(self, items: Sequence[Any], regions: RegionInputs) -> Mapping[str, Any]:
        return (
            self.student.collate(items, regions)
            if self.split
            else self.student.prepare(items, regions)
        )


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with `fn` applied to every tensor inside it (mappings, lists, tuples and
    dataclasses such as `RegionInputs` are rebuilt; anything else is kept)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(v, fn) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value,
            **{
                f.name: map_tensors(getattr(value, f.name), fn)
                for f in dataclasses.fields(value)
                if f.init
            },
        )
    return value


def to_device(value: Any, device: str | torch.device, *, non_blocking: bool = False) -> Any:
    """Every tensor in `value` on `device` (non-blocking copies from pinned memory on CUDA)."""
    return map_tensors(value, lambda t: t.to(device, non_blocking=non_blocking))


StudentFactory = Callable[..., Student]
STUDENTS: Registry[StudentFactory] = Registry("student", group="madcache.students")


def image_of(batch: int, choices: int, device: torch.device) -> torch.Tensor:
    """The image row of each of the B x C flattened (example, choice) sequences."""
    return torch.arange(batch, device=device).repeat_interleave(choices)


TOKENIZER_SUBDIR = "tokenizer"


def exported_options(
    config: Any, tokenizer: Any, directory: Path, **resolved: Any
) -> dict[str, Any]:
    """A student's options for `save_student`: its config with the `resolved` values (the
    built model's config, no source checkpoint), the tokenizer saved beside the weights."""
    tokenizer.save_pretrained(str(directory / TOKENIZER_SUBDIR))
    return {**dataclasses.asdict(config), "tokenizer_dir": TOKENIZER_SUBDIR, **resolved}
