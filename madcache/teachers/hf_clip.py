"""transformers CLIP and SigLIP teachers (`hf-clip:<dir>`, `siglip:<dir>`): image and text towers
in one joint space, from a local `save_pretrained` directory, with the same targets as the
open_clip teacher (docs/teachers.md):

- image `V_t`: CLIP `visual_projection(vision_model(pixels).pooler_output)` (the post-layernorm
  [CLS], projected) = `get_image_features`; SigLIP `vision_model(pixels).pooler_output` (the
  attention-pooling head) = `get_image_features`;
- text `T_t`: the model's own pooled text feature, projected: CLIP `text_projection` of the EOS
  token after `final_layer_norm`; SigLIP `text_model.head` of the last position;
- words `f_tt(w)`: the mean of the word's sub-token features after `final_layer_norm`, each
  through the same projection (CLIP `text_projection`, SigLIP `head`), so they live in the joint
  space with `T_t` and `V_t`;
- logits: `logit_scale.exp() * cos + logit_bias` (no bias for CLIP), the model's own.

Texts are tokenised word by word with the directory's tokenizer (CLIP's byte-level BPE,
SigLIP's SentencePiece), so every token knows its word: for both, whitespace-separated words
tokenise the same alone as inside the text. CLIP rows are `<|startoftext|>` + pieces +
`<|endoftext|>`, at most 77 tokens (open_clip's truncation: EOT kept last), with an attention
mask; SigLIP rows are pieces + `</s>`, padded with its pad token to 64 tokens and attended in full
(`padding="max_length"` without a mask, how SigLIP was trained: it pools the last position).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from madcache.core.errors import ConfigError
from madcache.core.io import file_sha256
from madcache.data.pixels import processor_transform
from madcache.data.records import Text
from madcache.data.wordpieces import HFWordPieces, TokenBatch, hf_tokenizer
from madcache.teachers.base import TextEncoding, text_encoding
from madcache.teachers.hf import _HFTeacher, _load_model, _model_dir, _weights

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


class _JointTeacher(_HFTeacher):
    """What the CLIP and SigLIP teachers share; subclasses say how text is encoded."""

    modalities = frozenset({"image", "text"})
    joint_space = True
    pad_to_length = False

    def __init__(self, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(model, pooling="model", **kwargs)
        self.image_size = int(model.config.vision_config.image_size)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.image_dim = self.text_dim = int(self.embedding_dim())
        self.logit_scale = float(model.logit_scale.detach().exp())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = 0.0 if bias is None else float(bias.detach())

    def embedding_dim(self) -> int:
        raise NotImplementedError

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        return processor_transform(self.path, self.image_size)

    def text_processor(self) -> Callable[[Sequence[Text]], TokenBatch]:
        return HFWordPieces(self.path, self.context_length, self.pad_to_length)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.image_features(pixels.to(self.device)).float().cpu()

    @torch.inference_mode()
    def encode_tokens(self, batch: TokenBatch) -> TextEncoding:
        with self._autocast():
            tokens, pooled = self.text_features(
                batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
            )
            eos, tokens = self.project(pooled), self.project(tokens)
        return text_encoding(eos, tokens, batch)

    def fingerprint(self) -> dict[str, Any]:
        files = {
            name: file_sha256(self.path / name)
            for name in TOKENIZER_FILES
            if (self.path / name).is_file()
        }
        return self._fingerprint(
            preprocess=repr(self.image_transform()),
            context_length=self.context_length,
            tokenizer={
                "class": type(hf_tokenizer(str(self.path))).__name__,
                "files": files,
                "mapping": "word by word",
                "pad_to_length": self.pad_to_length,
            },
            logits={"scale": self.logit_scale, "bias": self.logit_bias},
        )


class HFClipTeacher(_JointTeacher):
    """A frozen transformers `CLIPModel` behind the `Teacher` protocol."""

    def embedding_dim(self) -> int:
        return self.model.config.projection_dim

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(
            self.model.vision_model(pixel_values=pixels).pooler_output
        )

    def text_features(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token features after final_layer_norm, the model's pooled EOS feature)."""
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.text_projection(x)


class SiglipTeacher(_JointTeacher):
    """A frozen transformers `SiglipModel` behind the `Teacher` protocol."""

    pad_to_length = True

    def embedding_dim(self) -> int:
        return self.model.text_model.head.out_features

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).pooler_output

    def text_features(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token features after final_layer_norm, the last position's): no attention mask,
        the padding is attended as in SigLIP's training; `head` is applied by `project`."""
        out = self.model.text_model(input_ids=ids)
        return out.last_hidden_state, out.last_hidden_state[:, -1]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.head(x)


def _load(
    teacher_cls,
    model_cls,
    *,
    arg: str,
    name: str,
    checkpoint: str | Path | None,
    device: str,
    autocast: bool,
):
    path = _model_dir(arg, name)
    found = json.loads((path / "config.json").read_text()).get("model_type")
    if found != model_cls.config_class.model_type:
        raise ConfigError(
            f"teacher {name}: {path} holds a {found} model, not {model_cls.config_class.model_type}"
        )
    weights = _weights(path, checkpoint, name)
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = _load_model(path, weights, model_cls)
    hf_tokenizer(str(path))  # fail now, not in a worker
    return teacher_cls(
        model.float(), name=name, path=path, weights=weights, device=device, autocast=autocast
    )


def load_hf_clip(
    *,
    arg: str,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    autocast: bool = True,
) -> HFClipTeacher:
    """A CLIP teacher from a local transformers `CLIPModel` directory."""
    from transformers import CLIPModel

    return _load(
        HFClipTeacher,
        CLIPModel,
        arg=arg,
        name=name or f"hf-clip:{arg}",
        checkpoint=checkpoint,
        device=device,
        autocast=autocast,
    )


def load_siglip(
    *,
    arg: str,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    autocast: bool = True,
) -> SiglipTeacher:
    """A SigLIP teacher from a local transformers `SiglipModel` directory."""
    from transformers import SiglipModel

    return _load(
        SiglipTeacher,
        SiglipModel,
        arg=arg,
        name=name or f"siglip:{arg}",
        checkpoint=checkpoint,
        device=device,
        autocast=autocast,
    )
