"""Weight files shared by the teacher backends: state-dict loading (digests: `core.io`)."""

from __future__ import annotations

from pathlib import Path

import torch

from madcache.core.io import load_weights


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or .pt/.bin via `torch.load(weights_only=True)`; an
    unreadable file is one error line naming it (`core.io.load_weights`)."""
    return load_weights(path, what="teacher weights")
