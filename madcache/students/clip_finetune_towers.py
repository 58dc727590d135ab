"""The image and text towers of `clip-finetune` (students/clip_finetune.py), from either library
the teachers load CLIP from, each read exactly as the teacher of that kind reads it:

- `OpenClipTowers`: an `open_clip.CLIP` from a model name or model-config JSON and a local
  weights file (the `openclip:` / `openclip-config:` teachers): `encode_image`, `encode_text`,
  open_clip's eval transform for the checkpoint's preprocessing settings, its BPE word by word;
- `HFClipTowers`: a transformers `CLIPModel` from a local `save_pretrained` directory (the
  `hf-clip:` teacher): the projected pooled image and EOS features, the directory's
  `preprocessor_config.json` and tokenizer, word by word.

A saved student keeps the resolved architecture (`model_config`) and the side files, so it is
rebuilt without the original checkpoint.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.core.io import loading, read_json
from madcache.data.pixels import processor_transform
from madcache.data.wordpieces import HFWordPieces, WordTokenizer, hf_tokenizer

NAME = "clip-finetune"
HF_SUBDIR = "clip"
PROCESSOR_FILE = "preprocessor_config.json"


class ImageTransform:
    """RGB PIL image -> (pixels [3, H, W], no mask) by a torchvision transform."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, image) -> tuple[torch.Tensor, None]:
        return self.transform(image), None


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"


# ----------------------------------------------------------------------------- open_clip


class OpenClipTowers:
    """An open_clip `CLIP` (open_clip's own BPE only, as the teacher)."""

    def __init__(self, cfg: dict[str, Any], preprocess: dict[str, Any]) -> None:
        self.cfg, self.preprocess = cfg, preprocess

    def embed_dim(self, model: nn.Module) -> int:
        return int(self.cfg["embed_dim"])

    def tokeniser(self, model: nn.Module) -> Callable:
        kwargs = dict(self.cfg.get("text_cfg", {}).get("tokenizer_kwargs", {}))
        return WordTokenizer(int(model.context_length), kwargs)

    def image_transform(self, model: nn.Module) -> ImageTransform:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return ImageTransform(image_transform_v2(PreprocessCfg(**self.preprocess), is_train=False))

    @staticmethod
    def image(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels)

    @staticmethod
    def text(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`encode_text` on the full context (causal: the padding changes no EOS feature)."""
        return model.encode_text(ids)

    def export(self, model: nn.Module, directory: Path) -> dict[str, Any]:
        return {"model_config": self.cfg, "preprocess": self.preprocess}


def open_clip_model(options: Any) -> tuple[nn.Module, OpenClipTowers]:
    """(model, towers) for `options.model` (+ `checkpoint`, `pretrained`), or the resolved
    `model_config` / `preprocess` of a saved student (no weights: `load_student` loads them)."""
    _offline()
    import open_clip

    cfg = _model_config(options, open_clip)
    model = open_clip.CLIP(**{k: v for k, v in cfg.items() if k != "preprocess_cfg"})
    if options.model_config is None:
        path = Path(options.checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointNotFoundError(f"{NAME}: checkpoint not found: {path}")
        with loading(path, what=f"{NAME} checkpoint"):
            open_clip.load_checkpoint(model, str(path), strict=True)
    preprocess = (
        dict(options.preprocess)
        if options.preprocess is not None
        else _preprocess(options, cfg, model, open_clip)
    )
    return model, OpenClipTowers(cfg, preprocess)


def _model_config(options: Any, open_clip: Any) -> dict[str, Any]:
    """A built-in model's config or a JSON file's; QuickGELU as the `pretrained` tag says."""
    if options.model_config is not None:
        return copy.deepcopy(options.model_config)
    path = Path(options.model)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"{NAME}: open_clip model config not found: {path}")
        cfg = read_json(path)
    else:
        cfg = open_clip.get_model_config(options.model)
        if cfg is None:
            raise ConfigError(
                f"{NAME}: open_clip has no model '{options.model}'. Available: "
                f"{', '.join(open_clip.list_models())}"
            )
    if cfg.get("custom_text") or "hf_tokenizer_name" in cfg.get("text_cfg", {}):
        raise ConfigError(
            f"{NAME}: {options.model} is not an open_clip CLIP with its own BPE "
            "tokenizer (custom_text / hf_tokenizer_name); only those are supported"
        )
    if _tag(options, open_clip).get("quick_gelu"):
        cfg["quick_gelu"] = True
    return cfg


def _tag(options: Any, open_clip: Any) -> dict[str, Any]:
    if not options.pretrained:
        return {}
    return open_clip.get_pretrained_cfg(options.model, options.pretrained) or {}


def _preprocess(
    options: Any, cfg: dict[str, Any], model: nn.Module, open_clip: Any
) -> dict[str, Any]:
    """The preprocessing settings merged as `open_clip.create_model` merges them: defaults, the
    config's `preprocess_cfg`, the model's image size, the tag's mean / std / interpolation /
    resize mode (what the teacher's `image_transform` uses)."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    merged = merge_preprocess_dict(asdict(PreprocessCfg()), cfg.get("preprocess_cfg", {}))
    merged["size"] = model.visual.image_size
    tag = _tag(options, open_clip)
    forced = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
    merged = merge_preprocess_dict(merged, forced)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


# ----------------------------------------------------------------------------- transformers


class HFClipTowers:
    """A transformers `CLIPModel` directory (its tokenizer and preprocessor settings too)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def embed_dim(self, model: nn.Module) -> int:
        return int(model.config.projection_dim)

    def tokeniser(self, model: nn.Module) -> Callable:
        return HFWordPieces(
            self.path, int(model.config.text_config.max_position_embeddings), pad_to_length=False
        )

    def image_transform(self, model: nn.Module) -> ImageTransform:
        return ImageTransform(
            processor_transform(self.path, int(model.config.vision_config.image_size))
        )

    @staticmethod
    def image(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)

    @staticmethod
    def text(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model.text_model(input_ids=ids, attention_mask=mask)
        return model.text_projection(out.pooler_output)

    def export(self, model: nn.Module, directory: Path) -> dict[str, Any]:
        """The tokenizer and preprocessor settings into `directory/clip`."""
        target = directory / HF_SUBDIR
        hf_tokenizer(str(self.path)).save_pretrained(str(target))
        if (self.path / PROCESSOR_FILE).is_file():
            shutil.copyfile(self.path / PROCESSOR_FILE, target / PROCESSOR_FILE)
        return {"hf_clip": HF_SUBDIR, "model_config": model.config.to_dict()}


def hf_clip_model(options: Any) -> tuple[nn.Module, HFClipTowers]:
    """(model, towers) for the `CLIPModel` directory `options.hf_clip` in float32, offline, or
    the resolved `model_config` of a saved student (no weights)."""
    _offline()
    from transformers import CLIPConfig, CLIPModel

    path = Path(options.hf_clip).expanduser()
    if options.model_config is not None:
        return CLIPModel(CLIPConfig.from_dict(options.model_config)), HFClipTowers(path)
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"{NAME}: hf_clip {path} is not a local transformers "
            "directory (no config.json); pass a CLIPModel directory "
            "written by save_pretrained"
        )
    found = read_json(path / "config.json").get("model_type")
    if found != "clip":
        raise ConfigError(f"{NAME}: {path} holds a {found} model, not clip")
    hf_tokenizer(str(path))  # a missing tokenizer fails now, naming the directory
    with loading(path, what=f"{NAME} checkpoint"):
        model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    return model, HFClipTowers(path)
