"""transformers teachers: a ViT image encoder, and BERT-family text encoders (BERT, RoBERTa,
MiniLM / sentence-transformers directories). Each covers one modality (`joint_space=False`).

Features (see docs/teachers.md):
- ViT image: the last layer's [CLS] token after the final layernorm (`pooling="cls"`, default)
  or the tanh pooler output (`pooling="pooler"`).
- Text "EOS": `pooling="cls"` (default for `bert:` / `roberta:`) is the last layer's first token,
  [CLS] / `<s>`; `pooling="mean"` (default for `hf-text:` on a sentence-transformers directory)
  is the attention-masked mean of the last layer, the sentence-transformers recipe.
- Words: the mean of the last layer's sub-token features whose character offsets fall inside
  the word (the text is tokenised whole, then tokens are mapped to the dataset layer's words).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.core.io import file_sha256, loading
from madcache.data.pixels import processor_transform
from madcache.data.records import Text
from madcache.teachers.base import TextEncoding, TokenBatch, inference_autocast, text_encoding
from madcache.teachers.weights import load_state_dict

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _model_dir(arg: str, name: str) -> Path:
    path = Path(arg).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"teacher {name}: {path} is not a local transformers model directory (no "
            "config.json); pass a directory written by save_pretrained (madcache never "
            "downloads)"
        )
    return path


def _weights(path: Path, checkpoint: str | Path | None, name: str) -> Path:
    """The weights file used: `checkpoint`, else the directory's own."""
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise CheckpointNotFoundError(f"teacher {name}: checkpoint not found: {ckpt}")
        return ckpt
    for filename in WEIGHT_FILES:
        if (path / filename).is_file():
            return path / filename
    raise CheckpointNotFoundError(
        f"teacher {name}: {path} has a config but no weights; put model.safetensors (or "
        "pytorch_model.bin) there, or pass --checkpoint /path/to/weights.safetensors"
    )


def _load_model(path: Path, weights: Path, auto_cls) -> torch.nn.Module:
    """`from_pretrained` on the directory, or its config + an external state-dict file."""
    if weights.parent == path and weights.name in WEIGHT_FILES:
        with loading(path, what="teacher checkpoint"):
            return auto_cls.from_pretrained(str(path), local_files_only=True)
    from transformers import AutoConfig

    build = getattr(auto_cls, "from_config", auto_cls)  # AutoModel.from_config, or ViTModel(...)
    with loading(path / "config.json", what="teacher config"):
        model = build(AutoConfig.from_pretrained(str(path), local_files_only=True))
    state = load_state_dict(weights)
    prefix = model.base_model_prefix + "."
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        raise ConfigError(f"checkpoint {weights} does not fit {path}: missing {missing[:5]}")
    return model


def _fingerprint_weights(weights: Path) -> dict[str, str]:
    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        return {s: file_sha256(weights.parent / s) for s in shards}
    return {weights.name: file_sha256(weights)}


class _HFTeacher:
    """What the image and text teachers share: device, autocast, fingerprint."""

    joint_space = False
    image_dim: int | None = None
    text_dim: int | None = None

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        path: Path,
        weights: Path,
        pooling: str,
        device: str,
        autocast: bool,
    ) -> None:
        self.name = name
        self.path = path
        self.weights = weights
        self.pooling = pooling
        self.device = device
        self.model = model.to(device).eval().requires_grad_(False)
        self._autocast = inference_autocast(device, autocast)

    def _fingerprint(self, **extra: Any) -> dict[str, Any]:
        import transformers

        config = self.model.config.to_dict()
        config.pop("transformers_version", None)
        return {
            "teacher": self.name,
            "backend": f"transformers {transformers.__version__}",
            "model": type(self.model).__name__,
            "config": config,
            "checkpoint": _fingerprint_weights(self.weights),
            "pooling": self.pooling,
            **extra,
        }


class ViTTeacher(_HFTeacher):
    modalities = frozenset({"image"})

    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.image_dim = int(model.config.hidden_size)
        self.image_size = int(model.config.image_size)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        return processor_transform(self.path, self.image_size)

    def text_processor(self) -> Callable[[Sequence[Text]], TokenBatch]:
        raise ConfigError(f"teacher {self.name} encodes images only")

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.model(pixel_values=pixels.to(self.device))
        feat = out.pooler_output if self.pooling == "pooler" else out.last_hidden_state[:, 0]
        return feat.float().cpu()

    def encode_tokens(self, batch: TokenBatch) -> TextEncoding:
        raise ConfigError(f"teacher {self.name} encodes images only")

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint(preprocess=repr(self.image_transform()))


def load_vit(
    *,
    arg: str,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    pooling: str = "cls",
    autocast: bool = True,
) -> ViTTeacher:
    """A ViT image teacher from a local `save_pretrained` directory."""
    if pooling not in ("cls", "pooler"):
        raise ConfigError(f"ViT pooling must be 'cls' or 'pooler', not {pooling!r}")
    name = name or f"vit:{arg}"
    path = _model_dir(arg, name)
    weights = _weights(path, checkpoint, name)
    _offline()
    from transformers import ViTModel

    model = _load_model(path, weights, ViTModel)
    return ViTTeacher(
        model,
        name=name,
        path=path,
        weights=weights,
        pooling=pooling,
        device=device,
        autocast=autocast,
    )


# --- text ----------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    _offline()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.is_fast:
        raise ConfigError(f"{path}: a fast tokenizer (tokenizer.json) is needed for offsets")
    return tok


class OffsetWordTokenizer:
    """Texts -> `TokenBatch` with a fast tokenizer: each text is tokenised whole and each
    token is given the word its character offsets start in. Picklable (the tokenizer is
    loaded once per process from the directory)."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        self.path = str(path)
        self.max_length = max_length

    def __call__(self, texts: Sequence[Text]) -> TokenBatch:
        tok = _tokenizer(self.path)
        rows, owners, cuts = [], [], []
        truncated = torch.zeros(len(texts), dtype=torch.bool)
        for b, text in enumerate(texts):
            ids, owner, cut, truncated[b] = self._one(tok, text)
            rows.append(ids)
            owners.append(owner)
            cuts.append(cut)
        width = max(len(r) for r in rows) if rows else 0
        input_ids = torch.full((len(texts), width), tok.pad_token_id, dtype=torch.long)
        token_word = torch.full((len(texts), width), -1, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.long)
        for b, (ids, owner) in enumerate(zip(rows, owners)):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            token_word[b, : len(ids)] = torch.tensor(owner[: len(ids)])
            mask[b, : len(ids)] = 1
        return TokenBatch(
            input_ids=input_ids,
            attention_mask=mask,
            token_word=token_word,
            n_words=[len(t.words) for t in texts],
            truncated=truncated,
            extra={"word_truncated": cuts},
        )

    def _one(self, tok, text: Text) -> tuple[list[int], list[int], torch.Tensor, bool]:
        enc = tok(
            text.text, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False
        )
        char_word = [-1] * len(text.text)
        for i, word in enumerate(text.words):
            char_word[word.start : word.end] = [i] * (word.end - word.start)
        owner = []
        for (start, end), special in zip(enc["offset_mapping"], enc["special_tokens_mask"]):
            hits = [] if special else [w for w in char_word[start:end] if w >= 0]
            owner.append(hits[0] if hits else -1)
        ids = list(enc["input_ids"])
        cut = torch.zeros(len(text.words), dtype=torch.bool)
        truncated = len(ids) > self.max_length
        if truncated:  # keep max_length-1 tokens, then the closing special token
            cut[[w for w in owner[self.max_length - 1 :] if w >= 0]] = True
            ids = ids[: self.max_length - 1] + ids[-1:]
            owner = owner[: self.max_length - 1] + [-1]
        return ids, owner, cut, truncated


class HFTextTeacher(_HFTeacher):
    modalities = frozenset({"text"})

    def __init__(self, model, *, max_length: int, family: str, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.text_dim = int(model.config.hidden_size)
        self.max_length = max_length
        self.family = family

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        raise ConfigError(f"teacher {self.name} encodes text only")

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"teacher {self.name} encodes text only")

    def text_processor(self) -> Callable[[Sequence[Text]], TokenBatch]:
        return OffsetWordTokenizer(self.path, self.max_length)

    @torch.inference_mode()
    def encode_tokens(self, batch: TokenBatch) -> TextEncoding:
        mask = batch.attention_mask.to(self.device)
        with self._autocast():
            hidden = self.model(
                input_ids=batch.input_ids.to(self.device), attention_mask=mask
            ).last_hidden_state.float()
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).float()
            eos = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        else:
            eos = hidden[:, 0]
        return text_encoding(eos, hidden, batch)

    def fingerprint(self) -> dict[str, Any]:
        tok_file = self.path / "tokenizer.json"
        return self._fingerprint(
            family=self.family,
            max_length=self.max_length,
            tokenizer={
                "class": type(_tokenizer(str(self.path))).__name__,
                "tokenizer.json": file_sha256(tok_file) if tok_file.is_file() else None,
                "mapping": "whole text, token -> word by char offsets",
            },
        )


def load_text_model(
    *,
    arg: str,
    family: str,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    pooling: str | None = None,
    max_length: int | None = None,
    autocast: bool = True,
) -> HFTextTeacher:
    """A BERT-family text teacher from a local `save_pretrained` directory.

    `pooling=None` picks "mean" for an `hf-text:` sentence-transformers directory (it has
    modules.json) and "cls" otherwise.
    """
    name = name or f"{family}:{arg}"
    path = _model_dir(arg, name)
    if pooling is None:
        pooling = "mean" if family == "hf-text" and (path / "modules.json").is_file() else "cls"
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"text pooling must be 'cls' or 'mean', not {pooling!r}")
    weights = _weights(path, checkpoint, name)
    _offline()
    from transformers import AutoModel

    model = _load_model(path, weights, AutoModel)
    tok = _tokenizer(str(path))
    if max_length is None:
        positions = getattr(model.config, "max_position_embeddings", 512)
        offset = (getattr(model.config, "pad_token_id", 0) or 0) + 1 if family == "roberta" else 0
        max_length = min(int(tok.model_max_length), positions - offset, 512)
    return HFTextTeacher(
        model,
        name=name,
        path=path,
        weights=weights,
        pooling=pooling,
        device=device,
        autocast=autocast,
        max_length=max_length,
        family=family,
    )
