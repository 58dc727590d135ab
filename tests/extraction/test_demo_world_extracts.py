"""Extraction over the generated demo world (original file formats), every dataset and format."""

from __future__ import annotations

import numpy as np
import pytest

from madcache.cache.reader import open_cache
from madcache.extraction import ExtractConfig, extract


@pytest.mark.parametrize(
    "dataset, split, store_format",
    [("vcr", "val", "zarr"), ("snli-ve", "dev", "hdf5"), ("vqa", "val", "zarr")],
)
def test_demo_world_extracts(
    demo_root, tiny_clip, tmp_path, minilm_dir, dataset, split, store_format
):
    name, checkpoint = tiny_clip
    out = tmp_path / "cache"
    summary = extract(
        ExtractConfig(
            dataset=dataset,
            root=demo_root / dataset,
            split=split,
            teacher=name,
            checkpoint=checkpoint,
            out=out,
            format=store_format,
            shard_size=16,
            batch_size=16,
            sentence_encoder=minilm_dir,
            progress=False,
        )
    )
    cache = open_cache(out)
    arrays = cache.arrays()
    assert len(arrays["example_id"]) == summary["examples"] > 0
    assert summary["shards"] == len(cache.manifest["shards"]) > 1
    assert np.isfinite(arrays["word_vr"]).all() and np.isfinite(arrays["word_score"]).all()
    logits = cache.manifest["default_logits"]
    if dataset == "snli-ve":
        assert len(cache.manifest["extra"]["kmeans_centres"]) == 3
    else:
        assert np.isfinite(arrays[f"logits/{logits}"]).all()
    if dataset == "vqa":  # the world's answers.txt is the default vocabulary
        vocab = (demo_root / "vqa" / "answers.txt").read_text().splitlines()
        assert len(cache.manifest["extra"]["answer_vocab"]) <= len(vocab)
        assert arrays["candidates"].shape == (summary["examples"], 10)
    targets = cache.load_targets(list(arrays["example_id"][:5]))
    assert targets.image.shape[0] == 5
