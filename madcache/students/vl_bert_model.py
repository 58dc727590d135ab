"""VL-BERT's VCR network (Su et al. 2020, `jackroos/VL-BERT` `vcr/modules/resnet_vlbert_for_vcr.py`,
`common/fast_rcnn.py`, `common/visual_linguistic_bert.py`), written for madcache with the released
`.model` files' parameter names, and the one pure function that maps a released state dict onto
it (`convert_state_dict`).

    pixels -> ResNet (conv1 .. layer3, stride in the 1x1 convs) -> RoIAlign 14x14 at 1/16 on the
    dataset's boxes (torchvision, aligned=False: the maskrcnn-benchmark kernel VL-BERT compiles)
    -> layer4-shaped RoI head (dilation 2, stride 1) x instance mask -> average -> [sin/cos box
    embedding (2048), 2048 features] -> Dropout, Linear, ReLU: one vector per box (`obj_reps`)

    text token:  word + LN(obj_reps[tag]) + position + type
    box:         object word embedding + LN(obj_reps) + position (= number of text tokens) + type 2
    [END]:       end embedding + position (+1) + type 2
    -> LayerNorm -> BERT encoder -> tanh pooler on [CLS] -> final_mlp (1 score per choice)

A sequence here is its padded text, then its padded boxes, then [END] (VL-BERT packs them
without padding in between; with the padding masked out of attention and the positions VL-BERT
gives, the outputs at real positions are the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from madcache.students.uniter_model import EPS, Encoder, MlmHead, Pooler

RESNET_BLOCKS = {50: (3, 4, 6), 101: (3, 4, 23), 152: (3, 8, 36)}
ROI_SIZE, ROI_SCALE = 14, 1.0 / 16
COORD_DIM = 256  # fast_rcnn.py: coordinate_embeddings(..., 256): 4 x 2 x 256 = 2048
NUM_CLASSES = 81  # VCR's COCO categories + background (the cnn_loss_reg head)


def _norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=EPS)


def res_layer(
    inplanes: int, planes: int, blocks: int, *, stride: int, dilation: int = 1
) -> nn.Sequential:
    """VL-BERT's `ResNet._make_layer` with `stride_in_1x1` (its cfgs: IMAGE_STRIDE_IN_1x1 true):
    torchvision's Bottleneck, the first block striding in conv1 and every block dilated."""
    from torchvision.models.resnet import Bottleneck

    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
    first = Bottleneck(inplanes, planes, 1, downsample, dilation=dilation)
    first.conv1.stride = (stride, stride)
    return nn.Sequential(
        first, *(Bottleneck(planes * 4, planes, dilation=dilation) for _ in range(blocks - 1))
    )


class Backbone(nn.Module):
    """`image_feature_extractor.backbone`: conv1, bn1, layer1-3 (stage 4 is the RoI head)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks = RESNET_BLOCKS[depth]
        self.layer1 = res_layer(64, 64, blocks[0], stride=1)
        self.layer2 = res_layer(256, 128, blocks[1], stride=2)
        self.layer3 = res_layer(512, 256, blocks[2], stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        return self.layer3(self.layer2(self.layer1(x)))


def coordinate_embeddings(boxes: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """`common/utils/bbox.py`: boxes [K, 4] (x1, y1, x2, y2 in resized pixels) and the image's
    resized (w, h) [K, 2] -> sin/cos of (centre, size) x 100 / image size, [K, 4 * 2 * 256]."""
    w, h = size[:, 0], size[:, 1]
    pos = torch.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2 / w * 100,
            (boxes[:, 1] + boxes[:, 3]) / 2 / h * 100,
            (boxes[:, 2] - boxes[:, 0]) / w * 100,
            (boxes[:, 3] - boxes[:, 1]) / h * 100,
        ],
        dim=1,
    )
    dim_mat = 1000 ** (torch.arange(COORD_DIM, dtype=boxes.dtype, device=boxes.device) / COORD_DIM)
    angle = pos[:, :, None] / dim_mat
    return torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(1)


class FastRCNN(nn.Module):
    """`image_feature_extractor` (IMAGE_C5_DILATED true, as every published cfg)."""

    def __init__(self, depth: int, final_dim: int) -> None:
        super().__init__()
        self.backbone = Backbone(depth)
        self.roi_head_feature_extractor = res_layer(1024, 512, 3, stride=1, dilation=2)
        self.obj_downsample = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(2 * 2048, final_dim), nn.ReLU()
        )

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor,
        box_mask: torch.Tensor,
        masks: torch.Tensor,
        size: torch.Tensor,
    ) -> torch.Tensor:
        """images [B, 3, H, W], boxes [B, R, 4] (resized pixels), box_mask [B, R], masks
        [B, R, 14, 14], size [B, 2] (resized w, h) -> obj_reps [B, R, final_dim] (0 at padding)."""
        from torchvision.ops import roi_align

        index = box_mask.nonzero()
        b, r = index[:, 0], index[:, 1]
        rois = torch.cat([b[:, None].to(boxes.dtype), boxes[b, r]], dim=1)
        pooled = roi_align(
            self.backbone(images).float(),
            rois.float(),
            (ROI_SIZE, ROI_SIZE),
            ROI_SCALE,
            1,
            aligned=False,
        ).to(images.dtype)
        feats = self.roi_head_feature_extractor(pooled) * masks[b, r][:, None].to(pooled.dtype)
        feats = feats.mean(dim=(2, 3))
        coords = coordinate_embeddings(boxes[b, r], size[b])
        reps = self.obj_downsample(torch.cat([coords, feats], dim=1))
        out = reps.new_zeros(*box_mask.shape, reps.shape[-1])
        out[b, r] = reps
        return out


class VisualLinguisticBert(nn.Module):
    """`vlbert._module` of the released files (visual_ln true, as every published cfg)."""

    def __init__(self, c: Mapping[str, Any]) -> None:
        super().__init__()
        hidden, visual = c["hidden_size"], c["visual_size"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], hidden)
        self.end_embedding = nn.Embedding(1, hidden)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], hidden)
        self.embedding_LayerNorm = _norm(hidden)
        self.embedding_dropout = nn.Dropout(c["hidden_dropout_prob"])
        if visual != hidden:
            self.visual_1x1_text = nn.Linear(visual, hidden)
            self.visual_1x1_object = nn.Linear(visual, hidden)
        self.visual_ln_text = _norm(hidden)
        self.visual_ln_object = _norm(hidden)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c)

    def _visual(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        project = getattr(self, f"visual_1x1_{kind}", None)
        return getattr(self, f"visual_ln_{kind}")(x if project is None else project(x))

    def forward(
        self,
        ids: torch.Tensor,
        types: torch.Tensor,
        text_mask: torch.Tensor,
        text_visual: torch.Tensor,
        objects: torch.Tensor,
        object_mask: torch.Tensor,
        object_word: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states [N, L + R + 1, H] of [text (L), boxes (R), END]. `text_visual`
        [N, L, V] the obj_reps of each token's box, `objects` [N, R, V], `object_word` [H]."""
        n, length = ids.shape
        text_len = text_mask.sum(dim=1, keepdim=True)
        text = self.word_embeddings(ids) + self._visual(text_visual, "text")
        boxes = object_word + self._visual(objects, "object")
        end = self.end_embedding.weight.expand(n, 1, -1)
        x = torch.cat([text, boxes, end], dim=1)
        rows = objects.shape[1]
        positions = torch.cat(
            [
                torch.arange(length, device=ids.device).expand(n, -1),
                text_len.expand(n, rows),
                text_len + 1,
            ],
            dim=1,
        )
        kinds = torch.cat([types, types.new_full((n, rows + 1), 2)], dim=1)
        x = x + self.position_embeddings(positions) + self.token_type_embeddings(kinds)
        x = self.embedding_dropout(self.embedding_LayerNorm(x))
        mask = torch.cat([text_mask, object_mask, text_mask.new_ones(n, 1)], dim=1).to(x.dtype)
        return self.encoder(x, ((1.0 - mask) * -10000.0)[:, None, None, :])


class HeadTransform(nn.Module):
    """MVRC's head transform (dense, GELU): `cnn_loss_reg.0`."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


def region_classifier(hidden: int) -> nn.Sequential:
    """`cnn_loss_reg` (CNN_LOSS_TOP): the head transform, Dropout (CNN_REG_DROPOUT 0), Linear to
    VCR's 81 categories, on the boxes' hidden states."""
    return nn.Sequential(HeadTransform(hidden), nn.Dropout(0.0), nn.Linear(hidden, NUM_CLASSES))


def mlm_head(c: Mapping[str, Any], word_embeddings: nn.Embedding) -> nn.Module:
    """`vlbert.mlm_head` of the pretrained file (BertOnlyMLMHead, decoder tied to the words)."""
    head = nn.Module()
    head.predictions = MlmHead(c, word_embeddings)
    return head


# ----------------------------------------------------------------------------- checkpoints

# pretrained-file prefixes -> ours (cfgs/vcr/*.yaml PARTIAL_PRETRAIN_PREFIX_CHANGES, after
# `module.` and `vlbert._module.` are stripped); tied copies the files hold are dropped
RENAMES = (("vlbert.mvrc_head.transform.", "cnn_loss_reg.0."), ("vlbert.mlm_head.", "mlm_head."))
TIED = ("image_feature_extractor.head.0.", "mlm_head.predictions.decoder.")
# pretraining parts the VCR model has no use for: never an error, reported as not used
UNUSED = (
    "vlbert.mvrc_head.region_cls_pred.",
    "vlbert.relationsip_head.",
    "object_mask_word_embedding.",
    "object_mask_visual_embedding.",
    "aux_text_visual_embedding.",
)
HEADS = ("final_mlp.", "cnn_loss_reg.", "mlm_head.")


def renamed(released: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released keys -> ours: `module.` (DataParallel) and `vlbert._module.` (TimeDistributed)
    prefixes stripped, then `RENAMES`; tied copies dropped."""
    out = {}
    for key, value in released.items():
        key = key.removeprefix("module.").replace("vlbert._module.", "vlbert.", 1)
        for old, new in RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        if not key.startswith(TIED):
            out[key] = value
    return out


def convert_state_dict(released: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released VCR (`vl-bert_base_a_res101-*.model`) or pretrained (`vl-bert-base-e2e.model`)
    state dict -> this port's keys. A pretrained file's token type 1 starts as a copy of type 0
    (PARTIAL_PRETRAIN_SEGMB_INIT: pretraining used types 0 and 2 only)."""
    state = renamed(released)
    types = "vlbert.token_type_embeddings.weight"
    if "final_mlp.1.weight" not in state and types in state and state[types].shape[0] > 1:
        state[types] = state[types].float().clone()
        state[types][1] = state[types][0]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def released_config(state: Mapping[str, torch.Tensor], heads: int | None) -> dict[str, Any]:
    """The VLBERT cfg values the weights fix (sizes, depths); heads default to hidden / 64."""
    words = state["vlbert.word_embeddings.weight"]
    hidden = words.shape[1]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("vlbert.encoder.layer.")}
    blocks = {
        int(k.split(".")[3])
        for k in state
        if k.startswith("image_feature_extractor.backbone.layer3.")
    }
    if not blocks:
        raise ValueError(
            "no ResNet (image_feature_extractor.backbone.*): a *-prec.model of "
            "precomputed features cannot drive the pixel model; pass an *-e2e.model"
        )
    depth = {v[2]: d for d, v in RESNET_BLOCKS.items()}.get(max(blocks) + 1)
    if depth is None:
        raise ValueError(f"layer3 has {max(blocks) + 1} blocks, not a ResNet-50/101/152")
    return {
        "vocab_size": words.shape[0],
        "hidden_size": hidden,
        "num_hidden_layers": max(layers) + 1,
        "num_attention_heads": heads or hidden // 64,
        "intermediate_size": state["vlbert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state["vlbert.position_embeddings.weight"].shape[0],
        "type_vocab_size": state["vlbert.token_type_embeddings.weight"].shape[0],
        "visual_size": state["image_feature_extractor.obj_downsample.1.weight"].shape[0],
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "image_num_layers": depth,
    }


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """VL-BERT's `init_weights` for new heads: N(0, 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0), module.bias.data.zero_()


def xavier_head(head: nn.Sequential) -> None:
    """`final_mlp`'s init in ResNetVLBERT.init_weight: Xavier-uniform weights, zero bias."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight), nn.init.zeros_(m.bias)


__all__ = [
    "FastRCNN",
    "VisualLinguisticBert",
    "convert_state_dict",
    "init_weights",
    "mlm_head",
    "region_classifier",
    "released_config",
    "renamed",
    "xavier_head",
]
