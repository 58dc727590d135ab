"""madcache.CacheDataset / CacheStream (issue 30.5) and the notebook code of docs/notebook.md."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import madcache

REPO = Path(__file__).resolve().parents[2]


def bench_scale():
    spec = importlib.util.spec_from_file_location(
        "bench_scale", REPO / "benchmarks" / "bench_scale.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_scale", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vcr(tmp_path_factory) -> Path:
    """`data/vcr/train.jsonl` (20 questions: 40 examples, real VCR format) and its zarr cache
    `caches/vcr-train` (3 shards: 16 examples each), as the notebook page expects them."""
    bench = bench_scale()
    base = tmp_path_factory.mktemp("notebook")
    root = base / "data" / "vcr"
    examples = bench.write_vcr(root, 40, np.random.default_rng(0))
    examples.sort(key=lambda e: e[1])
    bench.SHARD = 16
    bench.write_cache(
        base / "caches" / "vcr-train", "vcr", root, examples, fmt="zarr", dim=8, words=3
    )
    return base


def test_the_notebook_code_runs_as_written(vcr, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "notebook.md").read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(vcr)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/notebook.md", "exec"), namespace)
    assert namespace["loss"].item() > 0 and namespace["loss"].requires_grad
    assert len(namespace["data"]) == 40 and namespace["batch"].image.shape[1] == 8


def test_items_hold_what_load_targets_reads(vcr):
    cache = madcache.open_cache(vcr / "caches" / "vcr-train")
    data = madcache.CacheDataset(cache, dataset="vcr", root=vcr / "data" / "vcr", method="md")
    ids = [ex.id for ex in data.examples]
    assert ids == cache.example_ids()  # the cache's order
    full = cache.load_targets(ids)
    batch = madcache.collate(data.__getitems__([7, 0, 33]))
    assert [ex.id for ex in batch.examples] == [ids[7], ids[0], ids[33]]
    np.testing.assert_array_equal(batch.image.numpy(), full.image[[7, 0, 33]])
    np.testing.assert_array_equal(batch.text_eos.numpy(), full.text_eos[[7, 0, 33]])
    assert batch.word_feat is None and data[5].example.id == ids[5]


def test_mad_items_hold_the_selected_words(vcr):
    data = madcache.CacheDataset(
        vcr / "caches" / "vcr-train", dataset="vcr", root=vcr / "data" / "vcr", method="mad", m=2
    )
    batch = madcache.collate([data[3], data[4]])
    assert batch.word_feat.shape == (2, 4, 2, 8) and batch.word_mask.shape == (2, 4, 2)
    assert batch.logits.shape == (2, 4) and batch.word_mask.any()


def test_every_example_once_across_workers_ranks_and_samplers(vcr):
    root, cache = vcr / "data" / "vcr", vcr / "caches" / "vcr-train"
    seen = []
    for rank in range(2):
        stream = madcache.CacheStream(
            cache, dataset="vcr", root=root, chunk_size=6, rank=rank, world_size=2
        )
        loader = DataLoader(stream, batch_size=5, num_workers=2, collate_fn=madcache.collate)
        seen += [ex.id for batch in loader for ex in batch.examples]
    data = madcache.CacheDataset(cache, dataset="vcr", root=root)
    assert sorted(seen) == sorted(ex.id for ex in data.examples)
    sampled = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = DataLoader(
            data, batch_size=4, sampler=sampler, num_workers=1, collate_fn=madcache.collate
        )
        sampled += [ex.id for batch in loader for ex in batch.examples]
    assert sorted(sampled) == sorted(seen)


def test_the_exports_are_lazy_and_listed():
    assert {"open_cache", "CacheDataset", "CacheStream", "collate", "vision_term"} <= set(
        dir(madcache)
    )
    with pytest.raises(AttributeError):
        _ = madcache.no_such_thing
    assert torch.is_tensor(madcache.text_term(torch.zeros(1, 2, 3), torch.ones(1, 2, 3)))
