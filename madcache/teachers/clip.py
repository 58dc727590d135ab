"""open_clip teachers: CLIP image and text towers in one joint space.

Features (see docs/teachers.md):
- image: `model.encode_image(pixels)`, the projected image embedding;
- text "EOS": the projected EOS-token feature, equal to `model.encode_text(ids)` on the same ids;
- words: the mean of the word's sub-token features after `ln_final`, each projected by
  `text_projection`, so words live in the same space as the EOS and image embeddings.
Nothing is L2-normalised here: cosines normalise, and L1 distillation wants the raw scale.

Texts are tokenised word by word (the dataset layer's words) with open_clip's own BPE, so every
token knows its word. This equals whole-text tokenisation except that a run of punctuation
("...") that the dataset splits into several words is encoded piece by piece.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.core.io import file_sha256, loading
from madcache.data.records import Text
from madcache.data.wordpieces import TokenBatch, WordTokenizer
from madcache.teachers.base import TextEncoding, inference_autocast, text_encoding

CONFIG_DIR = Path(__file__).parent / "configs"
# Hub repos (open_clip's own pretrained table) whose files count as a local cache hit.
CACHE_FILENAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def _open_clip():
    """Import open_clip offline, with madcache's own model configs registered."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import open_clip

    if "madcache-demo" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


class OpenClipTeacher:
    """A frozen open_clip `CLIP` model behind the `Teacher` protocol."""

    modalities = frozenset({"image", "text"})
    joint_space = True

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        model_name: str,
        config: dict[str, Any],
        checkpoint: Path | None,
        device: str = "cpu",
        autocast: bool = True,
    ) -> None:
        open_clip = _open_clip()
        if not isinstance(model, open_clip.CLIP):
            raise ConfigError(
                f"teacher {name}: open_clip model {model_name} is a "
                f"{type(model).__name__}; madcache reads per-token text features "
                "from open_clip.CLIP models only"
            )
        text_cfg = config.get("text_cfg", {})
        if "hf_tokenizer_name" in text_cfg:
            raise ConfigError(
                f"teacher {name}: open_clip model {model_name} uses a Hugging Face "
                "tokenizer; word-by-word tokenisation supports open_clip's BPE only"
            )
        self.name = name
        self.model_name = model_name
        self.config = config
        self.checkpoint = checkpoint
        self.device = device
        self.model = model.to(device).eval().requires_grad_(False)
        self.context_length = int(model.context_length)
        self.tokenizer_kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
        self.image_dim = self.text_dim = int(config["embed_dim"])
        self.preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
        self.logit_scale, self.logit_bias = model_logit_scale(model)
        self._autocast = inference_autocast(device, autocast)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)

    def text_processor(self) -> Callable[[Sequence[Text]], TokenBatch]:
        return WordTokenizer(self.context_length, self.tokenizer_kwargs)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.encode_image(pixels.to(self.device)).float().cpu()

    @torch.inference_mode()
    def encode_tokens(self, batch: TokenBatch) -> TextEncoding:
        # trimmed by the attention mask: BPE id 0 is "!" as well as padding
        ids = batch.input_ids[:, : max(int(batch.attention_mask.sum(1).max()), 1)].to(self.device)
        with self._autocast():
            tokens = self.token_features(ids)
            eos = project_text(self.model, pool_eos(self.model, tokens, ids))
            tokens = project_text(self.model, tokens)
        return text_encoding(eos, tokens, batch)

    def token_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token text features after `ln_final` (unprojected), as in `encode_text`."""
        return text_token_features(self.model, ids)

    def fingerprint(self) -> dict[str, Any]:
        open_clip = _open_clip()
        ckpt = (
            None
            if self.checkpoint is None
            else {"file": self.checkpoint.name, "sha256": file_sha256(self.checkpoint)}
        )
        return {
            "teacher": self.name,
            "backend": f"open_clip {open_clip.__version__}",
            "model": self.model_name,
            "config": self.config,
            "checkpoint": ckpt,
            "preprocess": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocess_cfg.items()
            },
            "tokenizer": {
                "kind": "open_clip.SimpleTokenizer, word by word",
                "kwargs": self.tokenizer_kwargs,
            },
            "context_length": self.context_length,
            "logits": {"scale": self.logit_scale, "bias": self.logit_bias},
            "features": {
                "image": "encode_image (projected, unnormalised)",
                "eos": "projected EOS token == encode_text (unnormalised)",
                "word": "mean of projected sub-token features after ln_final",
            },
        }


def model_logit_scale(model: torch.nn.Module) -> tuple[float, float]:
    """(exp(logit_scale), logit_bias or 0): how the model itself turns cosines into logits."""
    bias = getattr(model, "logit_bias", None)
    return float(model.logit_scale.detach().exp()), 0.0 if bias is None else float(bias.detach())


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop the all-padding columns at the end. CLIP's text attention is causal, so tokens never
    see later positions: trimming changes no feature at the kept positions, only saves work."""
    used = int((ids != 0).sum(1).max()) if ids.numel() else 0
    return ids[:, : max(used, 1)]


def text_token_features(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-token features after `ln_final` for ids [B, L <= context_length]: `encode_text`'s
    computation (ENV.md) with the positional embedding and causal mask cut to L."""
    length = ids.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(ids).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask
    x = model.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
    return model.ln_final(x)


def pool_eos(model: torch.nn.Module, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    return text_global_pool(
        tokens, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )


def project_text(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def encode_text_trimmed(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(ids)` (unnormalised) computed on the padding-trimmed ids."""
    ids = trim_padding(ids)
    return project_text(model, pool_eos(model, text_token_features(model, ids), ids))


def load_openclip(
    *,
    arg: str,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    pretrained: str | None = "openai",
    random_init: bool = False,
    autocast: bool = True,
) -> OpenClipTeacher:
    """A teacher for an open_clip model name (a built-in config, or madcache's `madcache-demo`).

    `pretrained` names the open_clip tag whose preprocessing and QuickGELU setting the weights
    were trained with (ignored when the model has no such tag); `random_init` builds the model
    without weights (smoke tests only; the fingerprint records `checkpoint: null`).
    """
    _check_file(arg, checkpoint)  # before importing open_clip: a typo fails at once
    open_clip = _open_clip()
    config = open_clip.get_model_config(arg)
    if config is None:
        raise ConfigError(
            f"open_clip has no model '{arg}'. Available: {', '.join(open_clip.list_models())}"
        )
    tag = open_clip.get_pretrained_cfg(arg, pretrained) if pretrained else {}
    path = None if random_init else resolve_checkpoint(arg, checkpoint, tag)
    return _build(name or f"openclip:{arg}", arg, config, path, tag, device, autocast)


def load_openclip_config(
    *,
    arg: str,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    random_init: bool = False,
    autocast: bool = True,
) -> OpenClipTeacher:
    """A teacher from an open_clip model-config JSON file (registered under the file's stem)."""
    import json

    path = Path(arg)
    _check_file(path.stem, checkpoint)
    open_clip = _open_clip()
    if not path.is_file():
        raise ConfigError(f"open_clip model config not found: {path}")
    config = json.loads(path.read_text())
    known = open_clip.get_model_config(path.stem)
    if known is not None and known != config:
        raise ConfigError(
            f"{path}: open_clip already has a model '{path.stem}' with another "
            "config; rename the file"
        )
    if known is None:
        open_clip.add_model_config(path)
    weights = None if random_init else resolve_checkpoint(path.stem, checkpoint, {})
    return _build(
        name or f"openclip-config:{arg}", path.stem, config, weights, {}, device, autocast
    )


def _build(
    name: str,
    model_name: str,
    config: dict[str, Any],
    path: Path | None,
    tag: dict[str, Any],
    device: str,
    autocast: bool,
) -> OpenClipTeacher:
    preprocess = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
    quick_gelu = bool(tag.get("quick_gelu", False))
    with loading(path or model_name, what="teacher weights"):
        model = create_model(
            model_name,
            pretrained=None if path is None else str(path),
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg=preprocess,
        )
    config = copy.deepcopy(config)
    if quick_gelu:
        config["quick_gelu"] = True
    return OpenClipTeacher(
        model,
        name=name,
        model_name=model_name,
        config=config,
        checkpoint=path,
        device=device,
        autocast=autocast,
    )


def create_model(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """`open_clip.create_model`, offline, without its "initialized randomly" log warning."""
    import logging

    open_clip = _open_clip()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(model_name, **kwargs)
    finally:
        root.setLevel(level)


def resolve_checkpoint(model_name: str, checkpoint: str | Path | None, tag: dict[str, Any]) -> Path:
    """The local weights file: `checkpoint`, else a hub-cache copy of the tag's files.

    Never downloads; raises `CheckpointNotFoundError` at once, naming the file to provide.
    """
    if checkpoint is not None:
        return _check_file(model_name, checkpoint)
    repo = str(tag.get("hf_hub", "")).strip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in CACHE_FILENAMES:
            hit = try_to_load_from_cache(repo, filename)
            if isinstance(hit, str):
                return Path(hit)
    raise CheckpointNotFoundError(_missing_message(model_name, repo))


def _check_file(model_name: str, checkpoint: str | Path | None) -> Path | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint for open_clip model {model_name} not found: {path}"
        )
    return path


def _missing_message(model_name: str, repo: str) -> str:
    if model_name == "madcache-demo":
        return (
            "teacher madcache-demo needs weights: pretrain them with `madcache demo teacher "
            "--data DEMO_DIR --out demo-teacher.safetensors`, then pass --checkpoint "
            "demo-teacher.safetensors"
        )
    source = (
        (
            f" (e.g. open_clip_model.safetensors or open_clip_pytorch_model.bin from the "
            f"Hugging Face repo {repo})"
        )
        if repo
        else ""
    )
    return (
        f"open_clip model {model_name} needs weights: pass --checkpoint "
        f"/path/to/{model_name}.safetensors{source}. madcache never downloads; "
        "nothing was found in the local Hugging Face cache."
    )
