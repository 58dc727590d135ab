"""Mixed teachers (ViT + BERT-family, with and without a CLIP relevance model), fingerprints that
refuse a changed checkpoint / dataset file / setting, and the `madcache extract` command."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from madcache.cli import cli
from madcache.core.errors import FingerprintMismatchError
from madcache.extraction import ExtractConfig, extract


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    root = tmp_path_factory.mktemp("vit")
    ViTModel(config).eval().save_pretrained(root)
    return root


def mixed_config(tmp_path, toy_root, vit_dir, minilm_dir, **options) -> ExtractConfig:
    return ExtractConfig(
        dataset="toy-vcr",
        root=toy_root,
        split="vcr",
        protocol="vcr",
        vision_teacher=f"vit:{vit_dir}",
        text_teacher=f"bert:{minilm_dir}",
        out=tmp_path / "mixed",
        shard_size=6,
        progress=False,
        **options,
    )


def test_vit_and_bert_without_relevance_model(tmp_path, toy_root, vit_dir, minilm_dir, cache):
    config = mixed_config(tmp_path, toy_root, vit_dir, minilm_dir)
    with pytest.warns(
        UserWarning, match=r"word_vr, word_score, logits.*token selection or confidence weighting"
    ):
        extract(config)
    shard = cache.shards(config.out)[0]
    manifest = cache.manifest(config.out)
    assert shard["image_feat"].shape[1] == 32 and shard["text_eos"].shape[1] == 384
    assert np.isnan(shard["word_vr"]).all() and np.isnan(shard["word_score"]).all()
    assert (shard["word_yake"] >= 0).all() and not any(k.startswith("logits/") for k in shard)
    assert manifest["unavailable"] == ["word_vr", "word_score", "logits"]
    from madcache.method.methods import unavailable_methods

    assert set(unavailable_methods(manifest["unavailable"])) == {
        "md-ts",
        "md-ts-cw",
        "mad-af-plain",
        "mad",
        "mad-no-cw",
        "mad-no-ts",
        "mad-random",
    }
    assert manifest["fingerprint"]["teachers"]["relevance"] is None
    assert manifest["default_logits"] is None


def test_clip_relevance_model_scores_words_of_other_teachers(
    tmp_path, toy_root, vit_dir, minilm_dir, tiny_clip, cache
):
    name, checkpoint = tiny_clip
    config = mixed_config(
        tmp_path,
        toy_root,
        vit_dir,
        minilm_dir,
        relevance_model=name,
        relevance_checkpoint=checkpoint,
    )
    extract(config)
    shard = cache.shards(config.out)[0]
    manifest = cache.manifest(config.out)
    assert manifest["unavailable"] == [] and manifest["default_logits"] == "ia"
    assert np.isfinite(shard["word_vr"]).all() and shard["logits/ia"].shape[1] == 4
    assert shard["text_eos"].shape[1] == 384  # the text teacher's, not CLIP's
    assert manifest["fingerprint"]["teachers"]["relevance"]["checkpoint"]["sha256"]


# --- fingerprints -------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path, toy_root, tiny_clip):
    """A private copy of the toy root and checkpoint, and a finished extraction over them."""
    root = tmp_path / "root"
    shutil.copytree(toy_root, root)
    name, checkpoint = tiny_clip
    own = tmp_path / "teacher.safetensors"
    shutil.copy(checkpoint, own)
    config = ExtractConfig(
        dataset="toy-vcr",
        root=root,
        split="vcr",
        protocol="vcr",
        teacher=name,
        checkpoint=own,
        out=tmp_path / "cache",
        shard_size=6,
        progress=False,
    )
    extract(config)
    return config


def rerun_differences(config: ExtractConfig, **changes) -> list[str]:
    from dataclasses import replace

    with pytest.raises(FingerprintMismatchError) as info:
        extract(replace(config, **changes))
    return info.value.differences


def test_same_inputs_resume_without_work(fresh):
    summary = extract(fresh)
    assert summary["shards_resumed"] == summary["shards"] and summary["shards_written"] == 0


def test_changed_checkpoint_bytes_are_refused(fresh, tmp_path, clip_saver):
    _, other = clip_saver(tmp_path / "other", seed=7)
    shutil.copy(other, fresh.checkpoint)
    differences = rerun_differences(fresh)
    assert any(d.startswith("fingerprint.teachers.vision.checkpoint.sha256") for d in differences)


def test_changed_dataset_file_is_refused(fresh):
    path = fresh.root / "vcr.jsonl"
    path.write_text(path.read_text().replace("red car", "blue car", 1))
    differences = rerun_differences(fresh)
    assert any(d.startswith("fingerprint.dataset.files.vcr.jsonl") for d in differences)


def test_changed_setting_is_refused_and_force_overwrites(fresh, cache):
    assert rerun_differences(fresh, yake_top=5) == ["fingerprint.selection.top: 20 != 5"]
    from dataclasses import replace

    summary = extract(replace(fresh, yake_top=5, force=True))
    assert summary["shards_written"] == summary["shards"]
    assert cache.manifest(fresh.out)["fingerprint"]["selection"]["top"] == 5


def test_cli_names_what_differs_and_prints_a_summary(fresh):
    args = [
        "extract",
        "--teacher",
        fresh.teacher,
        "--checkpoint",
        str(fresh.checkpoint),
        "--dataset",
        "toy-vcr",
        "--protocol",
        "vcr",
        "--root",
        str(fresh.root),
        "--split",
        "vcr",
        "--out",
        str(fresh.out),
        "--shard-size",
        "6",
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args + ["--dtype", "float32"])
    assert result.exit_code == 2, result.output
    assert "fingerprint.dtype: 'float16' != 'float32'" in result.output
    assert "--force" in result.output
    result = CliRunner().invoke(cli, args + ["--dtype", "float32", "--force"])
    assert result.exit_code == 0, result.output
    for row in ("examples", "images", "texts", "shards", "bytes", "seconds", "samples/s"):
        assert row in result.output
    assert "12" in result.output
