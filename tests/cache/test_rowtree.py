"""Row digests (madcache/cache/rowtree.py): hand-computed trees, proofs, and the digest width."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from madcache.cache import rowtree
from madcache.cache.reader import open_cache


def sha(prefix: bytes, *parts: bytes, width: int = 16) -> bytes:
    return hashlib.sha256(prefix + b"".join(parts)).digest()[:width]


def test_a_three_block_tree_by_hand():
    """float32 [40, 1]: 16 rows (64 bytes) a block, so blocks of 16, 16 and 8 rows; the last
    node of level 1 has no sibling."""
    array = np.arange(40, dtype=np.float32).reshape(40, 1)
    tree, info = rowtree.build_tree(array)
    raw = array.tobytes()
    leaves = [sha(b"\0", raw[i : i + 64]) for i in (0, 64, 128)]
    level1 = [sha(b"\1", leaves[0], leaves[1]), sha(b"\1", leaves[2])]
    root = sha(b"\1", *level1)
    assert info == {"block": 16, "root": root.hex()}
    assert tree.shape == (6, 16)
    assert [bytes(row) for row in tree] == [*leaves, *level1, root]


def test_a_proof_checks_one_block_and_catches_a_changed_byte():
    array = np.arange(40, dtype=np.float32).reshape(40, 1)
    tree, info = rowtree.build_tree(array)
    rows = rowtree.proof_rows(3, [2])
    assert rows.tolist() == [3]  # the sibling on level 1; level 0's block 2 has none
    proof = [bytes(tree[r]) for r in rows]
    hashes = rowtree.leaf_hashes(array[32:], 16)
    assert rowtree.root_of(3, [2], hashes, proof).hex() == info["root"]
    changed = array[32:].copy()
    changed[5] += 1
    assert rowtree.root_of(3, [2], rowtree.leaf_hashes(changed, 16), proof).hex() != info["root"]


@pytest.mark.parametrize("width", [16, 32])
def test_the_width_comes_from_the_root(width):
    array = np.arange(4096, dtype=np.float16).reshape(512, 8)
    tree, info = rowtree.build_tree(array, width)
    assert rowtree.width_of(info["root"]) == width and tree.shape[1] == width
    assert rowtree.tree_problems("x", array, tree, {**info, "start": 0}) == []


def test_a_cache_with_32_byte_digests_still_loads(tmp_path, world, fmt, cache_helpers, monkeypatch):
    """Trees written with full sha256 digests (the first version 3 caches) read and verify as
    the 16-byte ones do, to the same targets; `cache verify` finds nothing wrong."""
    from madcache.cache.verify import verify_cache

    cache_helpers.write_world(tmp_path / "short", world, fmt=fmt)
    monkeypatch.setattr(rowtree, "DIGEST_BYTES", 32)
    cache_helpers.write_world(tmp_path / "full", world, fmt=fmt)
    full, short = open_cache(tmp_path / "full"), open_cache(tmp_path / "short")
    record = full.shards[0]["arrays"]
    assert (
        len(record["image_feat"]["rows"]["root"]) == 64 and record[rowtree.TREES]["shape"][1] == 32
    )
    ids = [e.id for e in world.examples][::3]
    got = full.load_targets(ids, needs=("image", "text_eos"))
    want = short.load_targets(ids, needs=("image", "text_eos"))
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.text_eos, want.text_eos)
    assert verify_cache(tmp_path / "full") == []
