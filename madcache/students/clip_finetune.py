"""The `clip-finetune` student: the teacher's own architecture, an open_clip `CLIP` or a
transformers `CLIPModel` loaded from a local checkpoint (clip_finetune_towers.py), finetuned end
to end (the paper's "Direct Finetune" row). docs/students.md.

Its task logits are its own scaled cosines, computed with the code and texts of the zero-shot
protocols (`madcache.data.prompts`, `madcache.data.wordpieces`), so that at step 0 it scores
what `madcache zeroshot` reports for a cache this checkpoint extracted:

- VCR (`multiple_choice`): `s * cos(image, text_c)` over the choices, the texts of the `iqa`
  protocol (question + answer; `prompt=ia`: the answer alone);
- SNLI-VE (`classification`): a 3-way linear head on the joint embedding
  `normalize(image) * normalize(hypothesis)` (element-wise), times `s`. It starts from the
  split's zero-shot k-means centres c_k: weight row k = 2 c_k, bias -c_k^2, so a logit is
  `s (2 c_k cos - c_k^2) = s (cos^2 - (cos - c_k)^2)`, whose arg-max is the nearest centre, the
  zero-shot prediction (the zero-shot logits `-s |cos - c_k|` rank the same);
- VQA (`multilabel`): `s * cos(image, statement(question, answer_v))` for every answer of the
  vocabulary (the zero-shot `template` logits, over the whole vocabulary instead of the cache's
  top-k candidates).

`s` is the checkpoint's own logit scale (`exp(logit_scale)`, trained with the rest). Pixels come
from the checkpoint's own preprocessing and texts are tokenised word by word with its tokenizer,
as the teacher of that kind does. The student distils nothing (distilling a model into itself
is refused when the run is configured): V_s is the image embedding, T_s the text embedding of
`example.texts`, and it has no per-token outputs (`token_spans` all -1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.config import config_from_dict
from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.data.base import CLASSIFICATION, MULTILABEL, MULTIPLE_CHOICE, TASKS
from madcache.data.prompts import (
    VCR_PROTOCOLS,
    cosine_logits,
    statement_texts,
    vcr_texts,
    vqa_question,
)
from madcache.data.records import Example, Text
from madcache.data.vqa import read_answer_vocab
from madcache.students.base import PixelInputs, StudentOutput
from madcache.students.clip_finetune_towers import (
    NAME,
    ImageTransform,
    hf_clip_model,
    open_clip_model,
)


@dataclass
class ClipFinetuneConfig:
    """Options of `clip-finetune` (`--student-option KEY=VALUE`).

    - `model`: an open_clip model name (e.g. `ViT-B-32`) or a model-config JSON file;
    - `checkpoint`: its local weights file (madcache never downloads);
    - `pretrained`: the open_clip tag the weights come from (e.g. `openai`), whose preprocessing
      and QuickGELU setting they were trained with, as for the teacher;
    - or `hf_clip`: a local transformers `CLIPModel` directory (weights, tokenizer,
      `preprocessor_config.json`), as the `hf-clip:` teacher;
    - `prompt`: the VCR texts (`iqa` question + answer, `ia` the answer alone);
    - `zero_shot_cache`: SNLI-VE: the cache whose k-means centres (manifest
      `extra.kmeans_centres`) the head starts from, or `kmeans_centres` given directly;
    - `task`, `num_classes`, `answers` / `answer_vocab`: from the dataset and cache, as for
      every student. `model_config` / `preprocess` are the resolved architecture a saved
      student is rebuilt from.
    """

    model: str | None = None
    checkpoint: str | None = None
    pretrained: str | None = None
    hf_clip: str | None = None
    prompt: str = "iqa"
    zero_shot_cache: str | None = None
    kmeans_centres: list[float] | None = None
    task: str = MULTIPLE_CHOICE
    num_classes: int = 3
    answers: list[str] = field(default_factory=list)
    answer_vocab: str | None = None
    model_config: dict[str, Any] | None = None
    preprocess: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"{NAME}: unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.prompt not in VCR_PROTOCOLS:
            raise ConfigError(
                f"{NAME}: prompt must be one of {', '.join(VCR_PROTOCOLS)}, got {self.prompt!r}"
            )
        if self.answer_vocab is not None and not self.answers:
            self.answers = read_answer_vocab(self.answer_vocab)
            self.answer_vocab = None
        if self.task == MULTILABEL and not self.answers:
            raise ConfigError(
                f"{NAME} task=multilabel (VQA) needs the answer vocabulary: "
                "answer_vocab=FILE, the same as the cache's"
            )
        if (self.model is None) == (self.hf_clip is None) and self.model_config is None:
            raise ConfigError(
                f"{NAME} needs one of model=NAME_OR_CONFIG_JSON (an open_clip "
                "model name or model-config file, with checkpoint=FILE) or "
                "hf_clip=DIR (a transformers CLIPModel directory)"
            )
        if self.model is not None and self.model_config is None and self.checkpoint is None:
            raise CheckpointNotFoundError(
                f"{NAME} needs checkpoint=FILE: the local weights of "
                f"{self.model} (madcache never downloads)"
            )
        if self.hf_clip is not None and self.checkpoint is not None:
            raise ConfigError(
                f"{NAME}: checkpoint is for an open_clip model; hf_clip reads the "
                "directory's own weights"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ClipFinetuneConfig:
        return config_from_dict(
            cls,
            options,
            noun="option",
            where=f"{NAME}: ",
            hidden=frozenset({"model_config", "preprocess"}),
        )


# ----------------------------------------------------------------------------- loading


def kmeans_centres(config: ClipFinetuneConfig) -> list[float]:
    """SNLI-VE's zero-shot centres (entailment, neutral, contradiction)."""
    if config.kmeans_centres is not None:
        centres = [float(c) for c in config.kmeans_centres]
    elif config.zero_shot_cache is not None:
        from madcache.cache.reader import open_cache

        extra = open_cache(config.zero_shot_cache).manifest.get("extra") or {}
        centres = [float(c) for c in extra.get("kmeans_centres") or ()]
    else:
        raise ConfigError(
            f"{NAME} task=classification (SNLI-VE) starts its head from the "
            "zero-shot k-means centres: pass zero_shot_cache=CACHE (the teacher "
            "cache of the split to start from) or kmeans_centres=[e, n, c]"
        )
    if len(centres) != config.num_classes:
        raise ConfigError(
            f"{NAME}: {config.num_classes} k-means centres needed, got "
            f"{len(centres)} (from {config.zero_shot_cache or 'kmeans_centres'})"
        )
    return centres


# ----------------------------------------------------------------------------- the student


class ClipFinetuneStudent(nn.Module):
    """See the module docstring. Build with `clip_finetune(model=..., checkpoint=...)`."""

    name = NAME
    visual_input = "pixels"
    head_prefixes = ("head.",)  # SNLI-VE's 3-way head (--head-lr-mul); none for VCR / VQA

    def __init__(self, config: ClipFinetuneConfig, model: nn.Module, towers: Any) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.towers = towers  # OpenClipTowers | HFClipTowers (clip_finetune_towers.py)
        self.task = config.task
        self.answers = list(config.answers)
        self.hidden_size = towers.embed_dim(model)
        self.words = towers.tokeniser(model)
        if self.task == CLASSIFICATION:
            self.head = nn.Linear(self.hidden_size, config.num_classes)
            if config.model_config is None:
                self.start_from_centres(kmeans_centres(config))

    @torch.no_grad()
    def start_from_centres(self, centres: Sequence[float]) -> None:
        """Weight row k = 2 c_k, bias -c_k^2: the head's arg-max is the nearest centre."""
        c = torch.tensor(centres, dtype=torch.float32)
        self.head.weight.copy_(2 * c[:, None].expand(-1, self.hidden_size))
        self.head.bias.copy_(-c * c)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def image_processor(self) -> ImageTransform:
        """The pixel loader's per-image processing (students/visual.py)."""
        return self.towers.image_transform(self.model)

    def scored_texts(self, example: Example) -> list[Text]:
        """The texts whose cosines are the logits (module docstring)."""
        if self.task == MULTIPLE_CHOICE:
            return list(vcr_texts(example, self.config.prompt))
        if self.task == MULTILABEL:
            return statement_texts(vqa_question(example), self.answers)
        return list(example.texts)

    def prepare(self, examples: Sequence[Example], pixels: PixelInputs) -> dict[str, Any]:
        """Token ids of every example's scored texts (and, for VQA, of `example.texts`, T_s)."""
        if not isinstance(pixels, PixelInputs):
            raise ConfigError(
                f"{NAME} reads the images themselves (PixelInputs), not region features"
            )
        scored = [self.scored_texts(ex) for ex in examples]
        if len({len(texts) for texts in scored}) != 1:
            raise ValueError(
                f"a batch mixes examples with {sorted({len(t) for t in scored})} texts"
            )
        texts = [t for texts in scored for t in texts]
        if self.task == MULTILABEL:
            texts += [ex.texts[0] for ex in examples]
        tokens = self.words(texts)
        return {
            "ids": tokens.input_ids.to(self.device),
            "mask": tokens.attention_mask.to(self.device),
            "pixels": pixels.pixels.to(self.device),
            "per_example": len(scored[0]),
        }

    def forward(self, inputs: Mapping[str, Any]) -> StudentOutput:
        image = self.towers.image(self.model, inputs["pixels"])  # [B, D]
        text = self.towers.text(self.model, inputs["ids"], inputs["mask"])  # [N, D]
        batch, per = image.shape[0], inputs["per_example"]
        scored = text[: batch * per].reshape(batch, per, -1)
        scale = self.model.logit_scale.exp()
        if self.task == CLASSIFICATION:
            joint = F.normalize(image, dim=-1) * F.normalize(scored[:, 0], dim=-1)
            logits = scale * self.head(joint)
        else:
            bias = getattr(self.model, "logit_bias", None)
            logits = cosine_logits(image, scored, scale=scale) + (0.0 if bias is None else bias)
        texts = text[batch * per :, None] if self.task == MULTILABEL else scored
        return StudentOutput(
            logits=logits,
            image_token=image[:, None].expand(-1, texts.shape[1], -1),
            cls_token=texts,
            text_tokens=texts[:, :, None],
            token_spans=torch.full(
                (*texts.shape[:2], 1, 2), -1, dtype=torch.long, device=texts.device
            ),
        )

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Refused: Direct Finetune has no adaptive-finetuning stage. A method with one is
        refused before the run starts (train/config.py); this guards any other caller."""
        raise ConfigError(f"{NAME} trains the task alone (Direct Finetune): use --method baseline")

    def export_options(self, directory: Path) -> dict[str, Any]:
        """The resolved architecture and preprocessing; the weights hold the rest (the head)."""
        return {
            **asdict(self.config),
            "model": None,
            "checkpoint": None,
            "pretrained": None,
            "hf_clip": None,
            "zero_shot_cache": None,
            "kmeans_centres": None,
            "answer_vocab": None,
            "answers": self.answers,
            **self.towers.export(self.model, directory),
        }


def clip_finetune(**options: Any) -> ClipFinetuneStudent:
    """Build the student from `--student-option` values (see `ClipFinetuneConfig`)."""
    config = ClipFinetuneConfig.from_options(options)
    model, towers = (open_clip_model if config.hf_clip is None else hf_clip_model)(config)
    return ClipFinetuneStudent(config, model, towers)


clip_finetune.visual_input = "pixels"
