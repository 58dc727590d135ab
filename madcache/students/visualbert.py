"""The `visualbert` student: transformers' `VisualBertModel` (Li et al. 2019), loaded from a local
`save_pretrained` directory — single-stream, region features as `visual_embeds`, the family of
VL-BERT and UNITER.

One sequence per scored text (docs/students.md):

    [CLS] text tokens [SEP] <pad..>   region_1 .. region_R <pad..>
    token type 0, positions 0..L-1   visual token type 1, visual position 0

- text: the checkpoint's BERT WordPiece tokenizer (uncased), character offsets kept;
- regions: the region store's features, through a learned `Linear(region_dim,
  visual_embedding_dim)` when their width differs from the checkpoint's (e.g. boxcrop's 199 or a
  ResNet's 1024 into the 2048 of the COCO checkpoints), then the model's own `visual_projection`.
  VisualBERT takes no box coordinates;
- V_s is the output at the first visual token (the region store's first region: the whole image
  for VCR and grid boxes, else a released format's first region, e.g. the most confident
  detection of a 10-column `butd-tsv`), T_s the [CLS] output;
- task heads on the pooled [CLS] (tanh pooler), as transformers' VisualBERT task models: dropout
  + linear;
- adaptive finetuning through the model's own pretraining heads (`VisualBertForPreTraining.cls`):
  MLM (`cls.predictions`, tied to the word embedding) on the scored texts with their image, and
  image-text matching (`cls.seq_relationship` on the pooled output; label 0 = match, 1 = not, its
  pretraining convention) on label-free image-question pairs (students/pretrained.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from madcache.core.errors import ConfigError
from madcache.data.records import Example
from madcache.students.base import RegionInputs, StudentOutput
from madcache.students.pretrained import (
    PretrainedStudent,
    PretrainedStudentConfig,
    mlm_itm_losses,
    pretrained_parts,
    student_output,
    text_inputs,
    transformers_task_model,
)


@dataclass
class VisualBertConfig(PretrainedStudentConfig):
    """Options of `visualbert` (`--student-option KEY=VALUE`); see `PretrainedStudentConfig`.
    `region_dim` is the region store's feature width (the trainer passes it)."""

    region_dim: int | None = None

    student = "visualbert"


class VisualBertStudent(PretrainedStudent):
    """See the module docstring. Build with `visualbert(checkpoint=DIR, ...)`; `model` is a
    `VisualBertForPreTraining`."""

    name = "visualbert"
    visual_input = "regions"
    head_prefixes = ("head.",)  # the task head: --head-lr-mul (train/optim.py)

    def __init__(self, config: VisualBertConfig, tokenizer, model) -> None:
        super().__init__(config, tokenizer, model)
        width = model.config.visual_embedding_dim
        region_dim = config.region_dim or width
        self.region_proj = nn.Linear(region_dim, width) if region_dim != width else nn.Identity()
        self.dropout = nn.Dropout(model.config.hidden_dropout_prob)
        self.head = nn.Linear(self.hidden_size, config.num_outputs())

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def prepare(self, examples: Sequence[Example], regions: RegionInputs) -> dict[str, Any]:
        """Tokenise every `example.texts[c]` (B x C sequences) with character offsets."""
        if not isinstance(regions, RegionInputs):
            raise ConfigError(
                "visualbert reads region features: build a region store with "
                "`madcache regions` and pass --regions"
            )
        width = self.config.region_dim or self.model.config.visual_embedding_dim
        if regions.feat.shape[-1] != width:
            raise ConfigError(
                f"region features have {regions.feat.shape[-1]} dims but the "
                f"student expects region_dim={width}: pass --student-option "
                f"region_dim={regions.feat.shape[-1]}"
            )
        return {**text_inputs(self, examples), "regions": regions.to(self.device)}

    def encode(
        self, ids: torch.Tensor, mask: torch.Tensor, regions: RegionInputs, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [N, L + R, H], pooled [N, H]); sequence n sees image rows[n]."""
        visual = self.region_proj(regions.feat.float())[rows]
        out = self.model.visual_bert(
            input_ids=ids,
            attention_mask=mask.long(),
            token_type_ids=torch.zeros_like(ids),
            visual_embeds=visual,
            visual_attention_mask=regions.mask[rows].long(),
        )
        return out.last_hidden_state, out.pooler_output

    def forward(self, inputs: Mapping[str, Any]) -> StudentOutput:
        return student_output(
            self, inputs, inputs["regions"], lambda pooled: self.head(self.dropout(pooled))
        )

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """MLM + ITM through the checkpoint's pretraining heads (module docstring)."""
        return mlm_itm_losses(
            self,
            inputs,
            examples,
            inputs["regions"],
            generator,
            mlm_head=self.model.cls.predictions,
            itm_head=self.model.cls.seq_relationship,
            match_label=0,
        )

    def transformers_model(self):
        """The trained student as transformers' `VisualBertForMultipleChoice` (VCR-style tasks)
        or `VisualBertForVisualReasoning` (a head on the pooled output: classification, and VQA
        with the answers as labels; transformers' own VQA class reads another position). Its
        `visual_projection` takes the region features themselves: a `region_proj` is folded in
        (the product of the two linear maps, exact up to float rounding)."""
        from transformers import VisualBertForMultipleChoice, VisualBertForVisualReasoning

        task_cls = (
            VisualBertForMultipleChoice
            if self.task == "multiple_choice"
            else VisualBertForVisualReasoning
        )
        weights = {f"visual_bert.{k}": v for k, v in self.model.visual_bert.state_dict().items()}
        weights.update({"cls.weight": self.head.weight, "cls.bias": self.head.bias})
        changes = self.task_labels()
        if isinstance(self.region_proj, nn.Linear):
            prefix = "visual_bert.embeddings.visual_projection."
            weight, bias = _folded(
                self.region_proj, weights[f"{prefix}weight"], weights[f"{prefix}bias"]
            )
            weights.update({f"{prefix}weight": weight, f"{prefix}bias": bias})
            changes["visual_embedding_dim"] = self.region_proj.in_features
        return transformers_task_model(task_cls, self.model.config, weights, **changes)


def _folded(
    first: nn.Linear, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One linear map equal to `first` followed by (weight, bias), computed in float64."""
    w1, b1 = first.weight.detach().double(), first.bias.detach().double()
    w2, b2 = weight.detach().double(), bias.detach().double()
    return (w2 @ w1).to(weight.dtype), (w2 @ b1 + b2).to(bias.dtype)


def visualbert(**options: Any) -> VisualBertStudent:
    """Build the student from `--student-option` values (see `VisualBertConfig`)."""
    from transformers import VisualBertForPreTraining

    return VisualBertStudent(*pretrained_parts(VisualBertConfig, VisualBertForPreTraining, options))


visualbert.visual_input = "regions"
