"""The teacher registry: every teacher madcache knows, and `load_teacher`.

Each entry is one line: a name and a factory. Factories import their backend (open_clip,
transformers) only when called, so importing this package stays cheap and `madcache train`
never pulls in a teacher backend. Names ending in `:<...>` are patterns: the part after the
first colon (a model name, a config file, a local directory) is passed to the factory as `arg`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from madcache.core.errors import UnknownNameError
from madcache.teachers.base import TEACHERS, Teacher, TextEncoding, TokenBatch, pool_words

__all__ = ["TEACHERS", "Teacher", "TextEncoding", "TokenBatch", "pool_words", "load_teacher"]


def _lazy(target: str, **fixed: Any):
    """A factory that imports `module:function` on first use and calls it with `fixed` options."""

    def factory(**options: Any) -> Teacher:
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)(**fixed, **options)

    factory.__qualname__ = f"lazy({target})"
    return factory


_CLIP = "madcache.teachers.clip:load_openclip"
_CLIP_CONFIG = "madcache.teachers.clip:load_openclip_config"
_HF_IMAGE = "madcache.teachers.hf:load_vit"
_HF_TEXT = "madcache.teachers.hf:load_text_model"
_HF_CLIP = "madcache.teachers.hf_clip:load_hf_clip"
_SIGLIP = "madcache.teachers.hf_clip:load_siglip"

TEACHERS.register("clip-vit-b16", _lazy(_CLIP, arg="ViT-B-16", name="clip-vit-b16"))
TEACHERS.register("clip-vit-b32", _lazy(_CLIP, arg="ViT-B-32", name="clip-vit-b32"))
TEACHERS.register("clip-vit-l14", _lazy(_CLIP, arg="ViT-L-14", name="clip-vit-l14"))
TEACHERS.register("madcache-demo", _lazy(_CLIP, arg="madcache-demo", name="madcache-demo"))
TEACHERS.register("openclip:<model>", _lazy(_CLIP))
TEACHERS.register("openclip-config:<json>", _lazy(_CLIP_CONFIG))
TEACHERS.register("vit:<dir>", _lazy(_HF_IMAGE))
TEACHERS.register("bert:<dir>", _lazy(_HF_TEXT, family="bert"))
TEACHERS.register("roberta:<dir>", _lazy(_HF_TEXT, family="roberta"))
TEACHERS.register("hf-text:<dir>", _lazy(_HF_TEXT, family="hf-text"))
TEACHERS.register("hf-clip:<dir>", _lazy(_HF_CLIP))
TEACHERS.register("siglip:<dir>", _lazy(_SIGLIP))


def load_teacher(
    name: str, *, checkpoint: str | Path | None = None, device: str = "cpu", **options: Any
) -> Teacher:
    """Build a frozen teacher by registry name, e.g. `clip-vit-b16`, `openclip:ViT-B-32`,
    `openclip-config:my.json`, `roberta:/models/roberta-base`.

    Always offline: `checkpoint` is a local state-dict file (.safetensors, or .pt/.bin read with
    `torch.load(weights_only=True)`); without one, only an existing local cache is used and a
    missing one raises `CheckpointNotFoundError` naming the file to provide.
    """
    key, arg = _resolve(name)
    factory = TEACHERS.get(key)
    if arg is not None:
        options["arg"] = arg
        options.setdefault("name", name)
    return factory(checkpoint=checkpoint, device=device, **options)


def _resolve(name: str) -> tuple[str, str | None]:
    if name in TEACHERS or ":" not in name:
        return name, None
    prefix, arg = name.split(":", 1)
    for key in TEACHERS:
        if key.startswith(prefix + ":<") and arg:
            return key, arg
    raise UnknownNameError(f"unknown teacher '{name}'. Available: {', '.join(TEACHERS.names())}")
