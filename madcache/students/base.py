"""What any vision-language student must expose for MAD, and the student registry.

A student scores `example.texts[c]` against the image's regions for every choice c, and exposes:
- task logits (VCR: one score per choice -> [B, 4]; SNLI-VE [B, 3]; VQA [B, V] over the vocabulary);
- V_s, the output at the first visual token ("img" token), and T_s, the output at the text CLS
  token, for each scored sequence;
- per-token text outputs with the character spans of its own tokens in `example.texts[c].text`,
  so per-word features can be pooled against the cached teacher words (word = char span).
External students (a UNITER / VL-BERT port) implement this protocol: see docs/students.md.
"""

from __future__ import annotations

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
class PixelInputs:
    """Visual inputs of a student that reads the image itself (`visual_input = "pixels"`): the
    images as its own image processor prepared them, zero-padded to the batch's largest."""

    pixels: torch.Tensor     # [B, 3, H, W] float32
    mask: torch.Tensor       # [B, H, W] bool: real pixel (False = padding)

    def to(self, device: str | torch.device) -> "PixelInputs":
        return PixelInputs(self.pixels.to(device), self.mask.to(device))


VisualInputs = RegionInputs | PixelInputs


@dataclass
class StudentOutput:
    logits: torch.Tensor         # [B, K]
    image_token: torch.Tensor    # [B, C, H]  V_s
    cls_token: torch.Tensor      # [B, C, H]  T_s
    text_tokens: torch.Tensor    # [B, C, L, H]
    token_spans: torch.Tensor    # [B, C, L, 2] long; (-1, -1) for special tokens and padding


@runtime_checkable
class Student(Protocol):
    """A student may also declare `visual_input = "pixels"` (its factory and its class): it then
    gets `PixelInputs` from its own `image_processor()` instead of `RegionInputs` from a region
    store (madcache/students/visual.py). Without it, a student reads regions."""

    hidden_size: int
    task: str                    # "multiple_choice" | "classification" | "multilabel"

    def prepare(self, examples: Sequence[Example], regions: VisualInputs) -> Mapping[str, Any]:
        """Tokenise texts and build model inputs for a batch (no teacher involved)."""
        ...

    def __call__(self, inputs: Mapping[str, Any]) -> StudentOutput: ...

    def pretrain_losses(self, inputs: Mapping[str, Any],
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Adaptive-finetuning stage losses without task labels: {'mlm': .., 'itm': ..}."""
        ...


def task_logits(scores: torch.Tensor, task: str, batch: int, choices: int) -> torch.Tensor:
    """Head scores of the B x C sequences -> logits: [B, C] for multiple choice, else [B, K]."""
    if task == "multiple_choice":
        return scores.reshape(batch, choices)
    if choices != 1:
        raise ValueError(f"task {task} scores one text per example, got {choices}")
    return scores


StudentFactory = Callable[..., Student]
STUDENTS: Registry[StudentFactory] = Registry("student")
