"""The `vl-bert` student: VL-BERT (Su et al. 2020) as its VCR model `ResNetVLBERT` is published,
loaded from its `.model` files as they are (the released `vl-bert-{base,large}-e2e.model`, the
pretrained files the VCR cfgs start from, and the VCR checkpoints `vcr/train_end2end.py` writes,
`vl-bert_base_a_res101-0019.model`): torch dicts `{"state_dict": ...}` with DataParallel's
`module.` prefixes, read with `torch.load(weights_only=True)`.

- network and checkpoint conversion: `vl_bert_model.py`; the input VL-BERT's VCR dataset
  builds (object tags grounded to their boxes, the answer / rationale layout, pixels and the
  dataset's own boxes): `vl_bert_inputs.py`;
- a pixel student (`visual_input = "pixels"`, no region store): its loader
  (`pixel_loader(root)`) reads each image and its VCR metadata boxes and instance masks;
- V_s is the output at the first box (the whole image), T_s the text [CLS];
- the VCR head `final_mlp` (1 score per choice; VL-BERT trains it with a sigmoid loss, madcache
  with its task loss) on the pooled [CLS]; other tasks get a new head of their width;
- adaptive finetuning (no task labels): MLM with visual clues through the pretrained file's
  `mlm_head` (tied to the word embedding; a VCR file lacks it: it starts random and the load
  report says so) on the scored texts, and the VCR model's `cnn_loss_reg` (CNN_LOSS_TOP: the
  boxes' hidden states classified into VCR's 81 object categories, which the dataset's
  metadata gives). VL-BERT's MVRC needs the detector's class distribution, which VCR lacks;
  its caption-image relationship loss the paper drops;
- frozen parts as VL-BERT's cfgs set them: `frozen_stages` (IMAGE_FROZEN_BACKBONE_STAGES:
  1 = conv1 + bn1, 2-4 = layer1-3, 5 = the RoI head) and `frozen_bn` (IMAGE_FROZEN_BN:
  BatchNorm parameters fixed and BatchNorm always in eval mode).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from madcache.core.errors import CheckpointCorruptError, ConfigError
from madcache.core.io import load_weights
from madcache.data.records import Example
from madcache.students.base import (
    StudentOutput,
    exported_options,
    image_of,
    key_list,
    text_then_visual_output,
    to_device,
)
from madcache.students.pretrained import PretrainedStudentConfig
from madcache.students.pretraining import mask_tokens
from madcache.students.vl_bert_inputs import (
    BoxPixelInputs,
    VlBertImages,
    VlBertTextEncoder,
    VlBertTokens,
    pad_tokens,
)
from madcache.students.vl_bert_model import (
    HEADS,
    UNUSED,
    FastRCNN,
    VisualLinguisticBert,
    convert_state_dict,
    init_weights,
    mlm_head,
    region_classifier,
    released_config,
    xavier_head,
)

LOG = logging.getLogger("madcache.students.vl_bert")


@dataclass
class VlBertConfig(PretrainedStudentConfig):
    """Options of `vl-bert` (`--student-option KEY=VALUE`); see `PretrainedStudentConfig`.
    `checkpoint` a released `.model` file, `tokenizer_dir` a local bert-base-uncased directory
    (required), `num_attention_heads` (default hidden / 64), and VL-BERT cfg values: `scales`
    (SCALES), `pixel_means` (NETWORK.PIXEL_MEANS, BGR), `seq_len` (the VCR dataset's text
    length), `frozen_stages` (NETWORK.IMAGE_FROZEN_BACKBONE_STAGES), `frozen_bn`
    (NETWORK.IMAGE_FROZEN_BN), `cnn_reg` (NETWORK.ENABLE_CNN_REG_LOSS: AF adds cnn_loss_reg)."""

    num_attention_heads: int | None = None
    scales: list[int] = field(default_factory=lambda: [600, 1200])
    pixel_means: list[float] = field(default_factory=lambda: [102.9801, 115.9465, 122.7717])
    seq_len: int = 64
    frozen_stages: list[int] = field(default_factory=lambda: [1, 2])
    frozen_bn: bool = True
    cnn_reg: bool = True

    student = "vl-bert"

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.model_config is None:
            raise ConfigError(
                "vl-bert needs checkpoint=FILE: a released VL-BERT .model file "
                "(vl-bert-base-e2e.model, vl-bert_base_a_res101-*.model); "
                "madcache never downloads"
            )
        if len(self.scales) != 2 or not 0 < self.scales[0] <= self.scales[1]:
            raise ConfigError(
                f"vl-bert: scales must be [shorter, longest] sides, got {self.scales}"
            )
        if any(s not in (1, 2, 3, 4, 5) for s in self.frozen_stages):
            raise ConfigError(
                f"vl-bert: frozen_stages are 1-5 (conv1, layer1-3, RoI head), "
                f"got {self.frozen_stages}"
            )
        super().__post_init__()


class VlBertStudent(nn.Module):
    """See the module docstring. Build with `vl_bert(checkpoint=FILE, tokenizer_dir=DIR)`."""

    name = "vl-bert"
    visual_input = "pixels"
    head_prefixes = ("final_mlp.",)

    def __init__(self, config: VlBertConfig, tokenizer, model_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.model_config = c = dict(model_config)
        self.hidden_size = hidden = c["hidden_size"]
        self.task, self.answers = config.task, list(config.answers)
        self.text_input = VlBertTextEncoder(tokenizer, seq_len=config.seq_len)
        self.image_feature_extractor = FastRCNN(c["image_num_layers"], c["visual_size"])
        self.object_linguistic_embeddings = nn.Embedding(1, hidden)  # object_word_embed_mode 2
        self.vlbert = VisualLinguisticBert(c)
        self.final_mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, config.num_outputs()))
        self.cnn_loss_reg = region_classifier(hidden)
        self.mlm_head = mlm_head(c, self.vlbert.word_embeddings)
        for part in (
            self.object_linguistic_embeddings,
            self.vlbert,
            self.cnn_loss_reg,
            self.mlm_head,
        ):
            part.apply(init_weights)
        xavier_head(self.final_mlp)
        self.freeze()
        self.load_report = "random initialisation"

    def freeze(self) -> None:
        """IMAGE_FROZEN_BACKBONE_STAGES / IMAGE_FROZEN_BN (fast_rcnn.py, resnet.py)."""
        extractor = self.image_feature_extractor
        backbone = extractor.backbone
        stages = {
            1: (backbone.conv1, backbone.bn1),
            2: (backbone.layer1,),
            3: (backbone.layer2,),
            4: (backbone.layer3,),
            5: (extractor.roi_head_feature_extractor,),
        }
        for stage in self.config.frozen_stages:
            for module in stages[stage]:
                module.requires_grad_(False)
        if self.config.frozen_bn:
            for module in extractor.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.requires_grad_(False)

    def train(self, mode: bool = True) -> VlBertStudent:
        super().train(mode)
        if self.config.frozen_bn:  # ResNetVLBERT.train: frozen BatchNorm stays eval
            for module in self.image_feature_extractor.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.object_linguistic_embeddings.weight.device

    # ------------------------------------------------------------------ inputs

    def pixel_loader(self, root: str | Path) -> VlBertImages:
        """The visual loader (students/visual.py): images with their dataset boxes."""
        return VlBertImages(root, scales=self.config.scales, means=self.config.pixel_means)

    def tokenise(self, examples: Sequence[Example]) -> list[VlBertTokens]:
        return [self.text_input.example(ex) for ex in examples]

    def collate(self, items: Sequence[VlBertTokens], images: BoxPixelInputs) -> dict[str, Any]:
        if not isinstance(images, BoxPixelInputs):
            raise ConfigError(
                "vl-bert reads the images and their boxes itself (its "
                "pixel_loader), not region features"
            )
        counts = {len(item.ids) for item in items}
        if len(counts) != 1:
            raise ValueError(f"a batch mixes examples with {sorted(counts)} choices")
        return {
            **pad_tokens(items, self.tokenizer.pad_token_id),
            "num_choices": counts.pop(),
            "images": images,
        }

    def prepare(self, examples: Sequence[Example], images: BoxPixelInputs) -> dict[str, Any]:
        return to_device(self.collate(self.tokenise(examples), images), self.device)

    # ------------------------------------------------------------------ model

    def objects(self, images: BoxPixelInputs) -> torch.Tensor:
        """obj_reps [B, R, V]: one vector per box, once per image."""
        return self.image_feature_extractor(
            images.pixels, images.boxes, images.box_mask, images.masks, images.size
        )

    def encode(
        self,
        inputs: Mapping[str, Any],
        obj_reps: torch.Tensor,
        rows: torch.Tensor,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states [N, L + R + 1, H]; sequence n sees the boxes of image rows[n]."""
        ids = inputs["input_ids"] if ids is None else ids
        objects, box_mask = obj_reps[rows], inputs["images"].box_mask[rows]
        tags = inputs["tags"].clamp(max=objects.shape[1] - 1)
        text_visual = torch.gather(objects, 1, tags[..., None].expand(-1, -1, objects.shape[-1]))
        return self.vlbert(
            ids,
            inputs["token_types"],
            inputs["attention_mask"],
            text_visual,
            objects,
            box_mask,
            self.object_linguistic_embeddings.weight[0],
        )

    def forward(self, inputs: Mapping[str, Any]) -> StudentOutput:
        ids, choices = inputs["input_ids"], inputs["num_choices"]
        batch, length = ids.shape[0] // choices, ids.shape[1]
        hidden = self.encode(
            inputs, self.objects(inputs["images"]), image_of(batch, choices, ids.device)
        )
        scores = self.final_mlp(self.vlbert.pooler(hidden))
        scores = scores[:, 0] if self.task == "multiple_choice" else scores
        return text_then_visual_output(
            hidden,
            scores,
            task=self.task,
            batch=batch,
            choices=choices,
            length=length,
            token_spans=inputs["token_spans"],
        )

    def pretrain_losses(
        self, inputs: Mapping[str, Any], examples: Sequence[Example], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """MLM with visual clues on the scored texts, and cnn_loss_reg on their boxes (module
        docstring), from one forward pass. Random draws come from `generator` (CPU)."""
        ids, choices = inputs["input_ids"], inputs["num_choices"]
        batch, length = ids.shape[0] // choices, ids.shape[1]
        real = inputs["token_spans"][..., 0] >= 0
        masked, selected = mask_tokens(
            ids,
            real,
            generator,
            vocab_size=len(self.tokenizer),
            mask_id=self.tokenizer.mask_token_id,
        )
        images = inputs["images"]
        rows = image_of(batch, choices, ids.device)
        hidden = self.encode(inputs, self.objects(images), rows, ids=masked)
        text = hidden[:, :length]
        losses = {
            "mlm": F.cross_entropy(self.mlm_head.predictions(text[selected]), ids[selected])
            if selected.any()
            else text.sum() * 0.0
        }
        if self.config.cnn_reg:
            boxes = hidden[:, length:-1]
            real_box = images.box_mask[rows]
            losses["cnn_reg"] = F.cross_entropy(
                self.cnn_loss_reg(boxes[real_box]), images.classes[rows][real_box]
            )
        return losses

    def export_options(self, directory: Path) -> dict[str, Any]:
        """Options that rebuild the student (`save_student`): the resolved model config, the
        tokenizer written to `directory/tokenizer`."""
        return exported_options(
            self.config, self.tokenizer, directory, checkpoint=None, model_config=self.model_config
        )


# ----------------------------------------------------------------------------- loading


def load_released(student: VlBertStudent, state: Mapping[str, torch.Tensor], path: Path) -> str:
    """Load a converted state dict into `student`: a missing body weight, an unknown key or a
    shape that does not fit is one error line naming them; heads the file lacks (or of another
    width) start random and pretraining-only parts are left out: the report says which."""
    own = student.state_dict()
    ignored = sorted(k for k in state if k.startswith(UNUSED))
    unknown = sorted(k for k in state if k not in own and k not in ignored)
    misfit = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    new_head = [k for k in misfit if k.startswith("final_mlp.")]
    misfit = [k for k in misfit if k not in new_head]
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    body_missing = [k for k in missing if not k.startswith(HEADS)]
    if unknown or misfit or body_missing:
        parts = [
            f"{label} {key_list(keys)}"
            for label, keys in (
                ("missing", body_missing),
                ("unexpected", unknown),
                ("wrong shape", misfit),
            )
            if keys
        ]
        raise CheckpointCorruptError(
            f"vl-bert: {path} does not fit VL-BERT's VCR model: "
            f"{'; '.join(parts)}; pass a released VL-BERT .model "
            "file (vl-bert-base-e2e.model, vl-bert_base_a_res101-*)"
        )
    skip = {k.split(" ")[0] for k in new_head}
    student.load_state_dict(
        {k: v for k, v in state.items() if k in own and k not in skip}, strict=False
    )
    random = sorted({k.rsplit(".", 1)[0] for k in [*missing, *skip]})
    report = f"vl-bert: loaded {path} ({len(state) - len(ignored) - len(skip)} tensors)"
    if random:
        report += f"; new, random init: {key_list(random)}"
    if ignored:
        report += f"; not used: {key_list(ignored)}"
    return report


BODY = (
    "vlbert.word_embeddings.weight",
    "vlbert.encoder.layer.0.intermediate.dense.weight",
    "image_feature_extractor.obj_downsample.1.weight",
)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A released `.model` (torch.load weights_only=True; its `state_dict` unwrapped)
    converted by `convert_state_dict`."""
    released = load_weights(path, what="vl-bert checkpoint")
    if not isinstance(released, dict) or not all(
        isinstance(v, torch.Tensor) for v in released.values()
    ):
        raise CheckpointCorruptError(
            f"vl-bert: {path} is not a state dict of tensors; pass a released VL-BERT .model file"
        )
    state = convert_state_dict(released)
    absent = [k for k in BODY if k not in state]
    if absent:
        raise CheckpointCorruptError(
            f"vl-bert: {path} does not fit VL-BERT's VCR model: "
            f"missing {key_list(absent)}; pass a released VL-BERT "
            ".model file (vl-bert-base-e2e.model, ...)"
        )
    return state


def vl_bert(**options: Any) -> VlBertStudent:
    """Build the student from `--student-option` values (see `VlBertConfig`)."""
    from madcache.students.tokens import load_tokenizer

    config = VlBertConfig.from_options(options)
    if config.tokenizer_dir is None:
        raise ConfigError(
            "vl-bert needs tokenizer_dir=DIR: a local bert-base-uncased directory "
            "(vocab.txt), the vocabulary VL-BERT was trained with"
        )
    tokenizer = load_tokenizer(config.tokenizer_dir)
    if config.model_config is not None:  # a saved student: weights come later
        return VlBertStudent(config, tokenizer, config.model_config)
    path = Path(config.checkpoint).expanduser()
    state = read_checkpoint(path)
    try:
        model_config = released_config(state, config.num_attention_heads)
    except (KeyError, ValueError) as error:
        raise CheckpointCorruptError(
            f"vl-bert: {path} does not fit VL-BERT's VCR model: {error}"
        ) from None
    if len(tokenizer) != model_config["vocab_size"]:
        raise ConfigError(
            f"vl-bert: the tokenizer in {config.tokenizer_dir} has "
            f"{len(tokenizer)} tokens, the checkpoint's vocabulary "
            f"{model_config['vocab_size']}: pass bert-base-uncased's directory"
        )
    student = VlBertStudent(config, tokenizer, model_config)
    student.load_report = load_released(student, state, path)
    LOG.warning(student.load_report)
    return student


vl_bert.visual_input = "pixels"
