"""The `vilt` student: transformers' `ViltModel` (Kim et al. 2021), loaded from a local
`save_pretrained` directory. Patch-based: it reads the image itself, so it needs no detector and
no region store (`visual_input = "pixels"`).

One sequence per scored text (docs/students.md):

    [CLS] text tokens [SEP] <pad..>   [image CLS] patch_1 .. patch_P <pad..>
    modality type 0                   modality type 1

- pixels: each dataset image through the checkpoint's own `ViltImageProcessor` settings (its
  `preprocessor_config.json`: shorter side 384, longer side at most 640, multiples of 32, mean =
  std = 0.5 for the dandelin checkpoints), zero-padded to the batch with a pixel mask;
- patches: embedded once per image (`ViltEmbeddings.visual_embed`: patch projection, position
  embeddings interpolated to the image's patch grid, the image [CLS]) and shared by the image's C
  sequences, so VCR's four choices cost one patch embedding, not four;
- text: the checkpoint's BERT uncased tokenizer, at most `max_position_embeddings` (40) tokens;
- V_s is the output at the image [CLS] token (the first visual token), T_s the text [CLS];
- task heads on the pooled [CLS] (tanh pooler), shaped like transformers' ViLT VQA head
  (Linear 2H, LayerNorm, GELU, Linear);
- adaptive finetuning: MLM through the checkpoint's own `mlm_score` head (`ViltForMaskedLM`) on
  the scored texts with their image, and image-text matching with a 2-way head on the pooled
  output (ViLT's `itm_score`: label 1 = match; transformers does not ship it, so it starts random)
  on label-free image-question pairs (students/pretrained.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.data.records import Example
from madcache.students.base import PixelInputs, StudentOutput
from madcache.students.pretrained import (
    PretrainedStudent,
    PretrainedStudentConfig,
    mlm_itm_losses,
    pretrained_parts,
    student_output,
    text_inputs,
    transformers_task_model,
)

PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_SUBDIR = "image_processor"


@dataclass
class ViltConfig(PretrainedStudentConfig):
    """Options of `vilt` (`--student-option KEY=VALUE`); see `PretrainedStudentConfig`.
    `image_processor_dir` holds a `preprocessor_config.json` (default: the checkpoint's; without
    one, `ViltImageProcessor`'s defaults)."""

    max_length: int = 40
    image_processor_dir: str | None = None

    student = "vilt"


class ViltPixels:
    """RGB PIL image -> (pixels [3, H, W], pixel mask [H, W]) by a `ViltImageProcessor`.
    Picklable (the processor is plain settings)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.processor(images=image, return_tensors="pt")
        return out["pixel_values"][0].float(), out["pixel_mask"][0].bool()


def load_image_processor(config: ViltConfig):
    from transformers import ViltImageProcessor

    directory = config.image_processor_dir or config.checkpoint
    if directory is not None and (Path(directory) / PROCESSOR_FILE).is_file():
        return ViltImageProcessor.from_pretrained(str(directory), local_files_only=True)
    if config.image_processor_dir is not None:
        raise CheckpointNotFoundError(f"vilt: no {PROCESSOR_FILE} in {directory}")
    return ViltImageProcessor()


class ViltStudent(PretrainedStudent):
    """See the module docstring. Build with `vilt(checkpoint=DIR, ...)`; `model` is a
    `ViltForMaskedLM`."""

    name = "vilt"
    visual_input = "pixels"
    head_prefixes = ("head.",)  # the task head: --head-lr-mul (train/optim.py)

    def __init__(self, config: ViltConfig, tokenizer, model, processor) -> None:
        super().__init__(config, tokenizer, model)
        self.processor = processor
        hidden = self.hidden_size
        self.head = nn.Sequential(
            nn.Linear(hidden, 2 * hidden),
            nn.LayerNorm(2 * hidden),
            nn.GELU(),
            nn.Linear(2 * hidden, config.num_outputs()),
        )
        self.itm_head = nn.Linear(hidden, 2)

    @property
    def device(self) -> torch.device:
        return self.itm_head.weight.device

    def image_processor(self) -> ViltPixels:
        """The pixel loader's per-image processing (students/visual.py)."""
        return ViltPixels(self.processor)

    def prepare(self, examples: Sequence[Example], pixels: PixelInputs) -> dict[str, Any]:
        """Tokenise every `example.texts[c]` (B x C sequences) with character offsets."""
        if not isinstance(pixels, PixelInputs):
            raise ConfigError("vilt reads the images themselves (PixelInputs), not region features")
        return {**text_inputs(self, examples), "pixels": pixels.to(self.device)}

    def patches(self, pixels: PixelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """([image CLS] + patch embeddings [B, 1 + P, H], mask [B, 1 + P]), once per image.

        Training samples `max_image_length` patches per image, as ViLT does (transformers'
        `visual_embed`, drawing from the global RNG that the trainer seeds per step). At
        evaluation every valid patch is used, each image on its own and under a fixed seed:
        `visual_embed` shuffles patches and fills a batch's padding with the global RNG, so
        scores would otherwise depend on the batch an example lands in and on the RNG state
        (`madcache predict` and `madcache eval` of one run disagreed)."""
        embed = self.model.vilt.embeddings.visual_embed
        if self.training:
            embeds, mask, _ = embed(
                pixels.pixels,
                pixels.mask.long(),
                max_image_length=self.model.config.max_image_length,
            )
            return embeds, mask
        parts = [
            _one_image_patches(embed, pixels.pixels[i], pixels.mask[i])
            for i in range(pixels.pixels.shape[0])
        ]
        return _pad_patches(parts)

    def encode(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        patches: tuple[torch.Tensor, torch.Tensor],
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [N, L + 1 + P, H], pooled [N, H]); sequence n sees image rows[n]."""
        embeds, patch_mask = patches
        out = self.model.vilt(
            input_ids=ids,
            attention_mask=mask.long(),
            image_embeds=embeds[rows],
            pixel_mask=patch_mask[rows],
        )
        return out.last_hidden_state, out.pooler_output

    def forward(self, inputs: Mapping[str, Any]) -> StudentOutput:
        return student_output(self, inputs, self.patches(inputs["pixels"]), self.head)

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """MLM through the checkpoint's `mlm_score` + ITM on label-free pairs (module docstring)."""
        return mlm_itm_losses(
            self,
            inputs,
            examples,
            self.patches(inputs["pixels"]),
            generator,
            mlm_head=self.model.mlm_score,
            itm_head=self.itm_head,
            match_label=1,
        )

    def export_options(self, directory: Path) -> dict[str, Any]:
        """`PretrainedStudent.export_options`, plus the image processor's settings."""
        self.processor.save_pretrained(str(directory / PROCESSOR_SUBDIR))
        return {**super().export_options(directory), "image_processor_dir": PROCESSOR_SUBDIR}

    def transformers_model(self):
        """The trained student as transformers' `ViltForQuestionAnswering`, whose classifier has
        the head's shape: logits per (text, image) pair (one per pair for multiple choice)."""
        from transformers import ViltForQuestionAnswering

        weights = {f"vilt.{k}": v for k, v in self.model.vilt.state_dict().items()}
        weights.update({f"classifier.{k}": v for k, v in self.head.state_dict().items()})
        return transformers_task_model(
            ViltForQuestionAnswering, self.model.config, weights, **self.task_labels()
        )

    def save_transformers(self, directory: Path) -> dict[str, Any]:
        """`PretrainedStudent.save_transformers`, plus the image processor's settings, so
        `ViltProcessor.from_pretrained(directory)` prepares inputs as madcache does."""
        self.processor.save_pretrained(str(directory))
        return super().save_transformers(directory)


def _one_image_patches(
    embed: Any, pixels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All patches of one image (cropped to its own pixels), shuffled by a fixed seed."""
    rows, cols = int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        embeds, patch_mask, _ = embed(
            pixels[None, :, :rows, :cols], mask[None, :rows, :cols].long(), max_image_length=-1
        )
    return embeds[0], patch_mask[0]


def _pad_patches(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (embeddings [1 + P_i, H], mask [1 + P_i]) -> a padded batch and its mask."""
    longest = max(e.shape[0] for e, _ in parts)
    embeds = parts[0][0].new_zeros(len(parts), longest, parts[0][0].shape[-1])
    mask = parts[0][1].new_zeros(len(parts), longest)
    for i, (e, m) in enumerate(parts):
        embeds[i, : e.shape[0]], mask[i, : m.shape[0]] = e, m
    return embeds, mask


def vilt(**options: Any) -> ViltStudent:
    """Build the student from `--student-option` values (see `ViltConfig`)."""
    from transformers import ViltForMaskedLM

    config, tokenizer, model = pretrained_parts(ViltConfig, ViltForMaskedLM, options)
    return ViltStudent(config, tokenizer, model, load_image_processor(config))


vilt.visual_input = "pixels"
