"""verify_cache finds damaged bytes, missing shards, broken offsets, index and manifest faults."""

from __future__ import annotations

import json

import numpy as np
import pytest

from madcache.cache.verify import shard_problems, verify_cache


@pytest.fixture
def root(tmp_path, world, fmt, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt=fmt)
    return tmp_path / "c"


def flip_byte(root, fmt: str, name: str) -> None:
    """Flip one byte of `name`'s stored data in shard 1, behind the library's back."""
    if fmt == "zarr":
        chunk = next(p for p in (root / "shard-00001.zarr" / name / "c").rglob("*") if p.is_file())
        data = bytearray(chunk.read_bytes())
        data[3] ^= 0xFF
        chunk.write_bytes(bytes(data))
        return
    import h5py

    path = root / "shard-00001.h5"
    with h5py.File(path, "r") as handle:
        offset = handle[name].id.get_offset()
    with open(path, "r+b") as raw:
        raw.seek(offset + 3)
        byte = raw.read(1)
        raw.seek(offset + 3)
        raw.write(bytes([byte[0] ^ 0xFF]))


def test_row_digests_that_disagree_with_their_rows_fail_verify(root, fmt):
    """`cache verify` recomputes every array's row tree: a digest changed together with its
    array's recorded sha256 (so that only the digests disagree) is found and named."""
    from madcache.cache.manifest import array_record
    from madcache.cache.reader import open_cache
    from madcache.cache.rowtree import TREES

    flip_byte(root, fmt, TREES)  # the first node: a leaf of the first array with a tree
    cache = open_cache(root)
    stored = cache.backend.read(root / cache.shards[1]["name"], [TREES])[TREES]
    manifest = json.loads((root / "manifest.json").read_text())
    for record in (manifest["shards"][1], json.loads((root / "commits/00001.json").read_text())):
        record["arrays"][TREES] = array_record(stored)
        target = root / (
            "manifest.json" if record is manifest["shards"][1] else "commits/00001.json"
        )
        target.write_text(json.dumps(manifest if target.name == "manifest.json" else record))
    first = min(
        n for n, r in manifest["shards"][1]["arrays"].items() if r.get("rows", {}).get("start") == 0
    )
    assert verify_cache(root) == [f"shard 1: {first}'s row digests ({TREES}) do not match its rows"]


def test_clean_cache_has_no_problems(root):
    assert verify_cache(root) == []


def test_flipped_byte(root, fmt):
    flip_byte(root, fmt, "word_feat")
    assert verify_cache(root) == ["shard 1: word_feat checksum mismatch (stored bytes changed)"]


def test_deleted_shard(root, fmt):
    from madcache.cache.backends import get_backend

    get_backend(fmt).remove(get_backend(fmt).shard_path(root, 2))
    assert verify_cache(root) == ["shard 2 is listed in the manifest but missing on disk"]


def test_truncated_offsets(root, fmt):
    from madcache.cache.backends import get_backend

    backend = get_backend(fmt)
    path = backend.shard_path(root, 0)
    arrays = backend.read(path)
    arrays["word_offsets"] = arrays["word_offsets"][:-2]
    backend.remove(path)
    backend.write(path, arrays)
    problems = verify_cache(root)
    assert any("word_offsets has shape" in p for p in problems)
    assert any("word_offsets checksum mismatch" in p for p in problems)
    assert any("(texts + 1)" in p for p in problems)
    assert any("word_offsets ends at" in p for p in problems)


def test_index_and_manifest_faults(root):
    (root / "index.parquet").unlink()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fingerprint"]["selection"]["yake_top"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_cache(root)
    assert problems[0] == "fingerprint_digest does not match the fingerprint (manifest edited?)"
    assert "shard(s) 0, 1, 2 were written by another extraction" in problems[1]  # the stamps
    assert "the commit records: shard(s) 0, 1, 2" in problems[2]
    assert problems[3:] == ["index.parquet is missing"]


def test_index_not_covering_rows(root):
    import pyarrow.parquet as pq

    table = pq.read_table(root / "index.parquet")
    pq.write_table(table.slice(1), root / "index.parquet")
    problems = verify_cache(root)
    assert len(problems) == 1 and "does not cover shard 0" in problems[0]


def test_incomplete_and_missing(tmp_path, world, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt="zarr", finish=False, shards=[0])
    assert verify_cache(tmp_path / "c") == [
        "the cache is incomplete (state 'writing'): resume the extraction with the same command"
    ]
    assert "no cache at" in verify_cache(tmp_path / "absent")[0]


def test_shard_problems_ranges():
    arrays = {
        "example_id": np.array(["a", "b"]),
        "image_feat": np.zeros((1, 2)),
        "example_image": np.array([0, 1]),
        "text_eos": np.zeros((2, 2)),
        "example_texts": np.array([[0], [2]]),
        "word_offsets": np.array([0, 2, 1]),
        "word_feat": np.zeros((1, 2)),
        "logits/iqa": np.zeros((3, 4)),
    }
    assert shard_problems(arrays) == [
        "logits/iqa has 3 rows, expected 2 (examples)",
        "example_image points outside the shard's 1 images (range 0..1)",
        "example_texts points outside the shard's 2 texts (range 0..2)",
        "word_offsets is not monotone",
    ]
