"""madcache.CacheDataset / CacheStream (issue 30.5) and the notebook code of docs/notebook.md."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import madcache
from madcache.core.errors import ConfigValueError
from madcache.data import read_examples
from madcache.data.stored import StoredExamples
from madcache.train.data import BatchTargets

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
    ids = list(data.examples.ids)  # from memory, no record decoded
    assert ids == cache.example_ids() == [ex.id for ex in data.examples]  # the cache's order
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


TARGETS = dataclasses.fields(BatchTargets)


def ids(item) -> str:
    return item[0].id


def epoch(data, **loader) -> list:
    """One DataLoader epoch: (example, targets) per example, in the order it came out."""
    batches = DataLoader(data, batch_size=5, collate_fn=madcache.collate, **loader)
    return [
        (example, [getattr(batch.targets.rows(torch.tensor([i])), f.name) for f in TARGETS])
        for batch in batches
        for i, example in enumerate(batch.examples)
    ]


def assert_same_epochs(got: list, expected: list) -> None:
    """The same examples (every field) with the same targets (to the bit), in the same order."""
    assert [ex.id for ex, _ in got] == [ex.id for ex, _ in expected]
    for (ex, targets), (ex_expected, targets_expected) in zip(got, expected):
        assert ex == ex_expected and ex.raw == ex_expected.raw
        for field, a, b in zip(TARGETS, targets, targets_expected):
            assert (a is None) == (b is None), field.name
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0, msg=field.name)


@pytest.fixture(scope="module")
def listed(vcr) -> list:
    """The split as the Datasets once kept it: read whole into a list of `Example`s."""
    return read_examples("vcr", vcr / "data" / "vcr", "train").examples


def test_a_split_read_by_the_dataset_is_on_disk_and_gives_the_same_epochs(vcr, listed, tmp_path):
    """`dataset=`/`root=`: the split is kept in an unnamed file in `workdir` (not as a list),
    and map-style and iterable epochs, with forked workers, give what the list gives."""
    cache, root = vcr / "caches" / "vcr-train", vcr / "data" / "vcr"
    options = {"method": "mad", "m": 2, "seed": 3}
    data = madcache.CacheDataset(cache, dataset="vcr", root=root, workdir=tmp_path, **options)
    assert isinstance(data.examples, StoredExamples) and os.listdir(tmp_path) == []
    from_list = madcache.CacheDataset(cache, examples=listed, **options)
    assert isinstance(from_list.examples, list)
    shuffled = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).tolist()
    assert_same_epochs(
        epoch(data, sampler=shuffled, num_workers=2, multiprocessing_context="fork"),
        epoch(from_list, sampler=shuffled),
    )
    stream = madcache.CacheStream(cache, dataset="vcr", root=root, chunk_size=6, **options)
    assert isinstance(stream.examples, StoredExamples)
    got = epoch(stream, num_workers=2, multiprocessing_context="fork")
    expected = epoch(madcache.CacheStream(cache, examples=listed, chunk_size=6, **options))
    assert_same_epochs(sorted(got, key=ids), sorted(expected, key=ids))  # workers interleave
    given = madcache.CacheDataset(cache, examples=data.examples, **options)
    assert given.examples.records is data.examples.records  # given on disk: kept there


def test_spawned_workers_read_the_split_from_disk(vcr, listed):
    """Workers started by spawn get the open file (not a copy of the examples, nor a name) and
    deal the chunks as forked ones do (forkserver, Python 3.14's default: tests/data/
    test_stored.py)."""
    cache, root = vcr / "caches" / "vcr-train", vcr / "data" / "vcr"
    stream = madcache.CacheStream(cache, dataset="vcr", root=root, chunk_size=6, method="mad")
    got = epoch(stream, num_workers=2, multiprocessing_context="spawn")
    expected = epoch(madcache.CacheStream(cache, examples=listed, chunk_size=6, method="mad"))
    assert_same_epochs(sorted(got, key=ids), sorted(expected, key=ids))


def test_a_workdir_that_is_no_folder_is_refused(vcr, tmp_path):
    with pytest.raises(ConfigValueError, match=r"^workdir: .*missing is not a folder"):
        madcache.CacheDataset(
            vcr / "caches" / "vcr-train",
            dataset="vcr",
            root=vcr / "data" / "vcr",
            workdir=tmp_path / "missing",
        )


def test_the_exports_are_lazy_and_listed():
    assert {"open_cache", "CacheDataset", "CacheStream", "collate", "vision_term"} <= set(
        dir(madcache)
    )
    with pytest.raises(AttributeError):
        _ = madcache.no_such_thing
    assert torch.is_tensor(madcache.text_term(torch.zeros(1, 2, 3), torch.ones(1, 2, 3)))
