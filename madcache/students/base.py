"""What any vision-language student must expose for MAD, and the student registry.

A student scores `example.texts[c]` against the image's regions for every choice c, and exposes:
- task logits (VCR: one score per choice -> [B, 4]; SNLI-VE [B, 3]; VQA [B, V] over the vocabulary);
- V_s, the output at the first visual token ("img" token), and T_s, the output at the text CLS
  token, for each scored sequence;
- per-token text outputs with the character spans of its own tokens in `example.texts[c].text`,
  so per-word features can be pooled against the cached teacher words (word = char span).
External students (a UNITER / VL-BERT port) implement this protocol: see docs/students.md.

Optional hooks (`Preparer`): a student with `tokenise(examples)` and `collate(items, regions)` is
tokenised once per example, by the training data pipeline, ahead of the step; any other student
is prepared whole per batch with `prepare`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from madcache.data.records import Example
from madcache.core.registry import Registry


@dataclass
class RegionInputs:
    """Visual inputs for a batch of images: region features + normalised boxes."""

    feat: torch.Tensor       # [B, R, Dr] float32
    boxes: torch.Tensor      # [B, R, 4] float32, (x1, y1, x2, y2) / (width, height)
    mask: torch.Tensor       # [B, R] bool: real region (False = padding)

    def to(self, device: str | torch.device) -> "RegionInputs":
        return RegionInputs(self.feat.to(device), self.boxes.to(device), self.mask.to(device))


@dataclass
class StudentOutput:
    logits: torch.Tensor         # [B, K]
    image_token: torch.Tensor    # [B, C, H]  V_s
    cls_token: torch.Tensor      # [B, C, H]  T_s
    text_tokens: torch.Tensor    # [B, C, L, H]
    token_spans: torch.Tensor    # [B, C, L, 2] long; (-1, -1) for special tokens and padding


@runtime_checkable
class Student(Protocol):
    hidden_size: int
    task: str                    # "multiple_choice" | "classification" | "multilabel"

    def prepare(self, examples: Sequence[Example], regions: RegionInputs) -> Mapping[str, Any]:
        """Tokenise texts and build model inputs for a batch (no teacher involved)."""
        ...

    def __call__(self, inputs: Mapping[str, Any]) -> StudentOutput: ...

    def pretrain_losses(self, inputs: Mapping[str, Any],
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Adaptive-finetuning stage losses without task labels: {'mlm': .., 'itm': ..}."""
        ...


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
        self.split = callable(getattr(student, "tokenise", None)) and \
            callable(getattr(student, "collate", None))

    def tokenise(self, examples: Sequence[Example]) -> list[Any]:
        return self.student.tokenise(examples) if self.split else list(examples)

    def collate(self, items: Sequence[Any], regions: RegionInputs) -> Mapping[str, Any]:
        return self.student.collate(items, regions) if self.split \
            else self.student.prepare(items, regions)


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
        return dataclasses.replace(value, **{f.name: map_tensors(getattr(value, f.name), fn)
                                             for f in dataclasses.fields(value) if f.init})
    return value


def to_device(value: Any, device: str | torch.device, *, non_blocking: bool = False) -> Any:
    """Every tensor in `value` on `device` (non-blocking copies from pinned memory on CUDA)."""
    return map_tensors(value, lambda t: t.to(device, non_blocking=non_blocking))


StudentFactory = Callable[..., Student]
STUDENTS: Registry[StudentFactory] = Registry("student")
