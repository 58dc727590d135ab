"""Row digests (format version 3): a hash tree over the row blocks of each numeric array of a
shard, so that a read of a few rows is checked by hashing only those rows.

The rows of an array are cut into blocks of `block_rows` rows (a power of two, the fewest rows
holding `BLOCK_BYTES`, 64: one row of a feature, 16 of a float32 score, 8 of an int64 index;
small, since a sparse read over-reads up to a block per run of rows of each small array, and
those arrays' trees are a negligible part of a shard). Each block
is a leaf, sha256(0x00 || its bytes); each node is sha256(0x01 || left || right) (a last node
without a sibling: sha256(0x01 || left)); the 0x00 / 0x01 prefixes keep a leaf from passing for
a node. Leaves and nodes keep the first `DIGEST_BYTES` (16) bytes of their sha256: the proof of
a sparse read is the bulk of what it reads besides the rows, and 128 bits still make an
accidental or mixed-up block pass with probability 2^-128 (a reader takes the width from the
root's length, so trees of full 32-byte digests read too). The trees of a shard's arrays are
stored in it as one array `rowtrees` (uint8 [nodes, 16]; each tree's levels one after another,
leaves first); the manifest's record of an
array keeps its root and where its tree starts (`"rows": {"block", "root", "tree", "start"}`),
and `rowtrees` has its own record like any array. (One array, not one per tree: each array
a Zarr shard holds costs ~2 ms to write.)

So the trust chain of a row is manifest -> root -> the few nodes on its path -> the row: a
reader hashes the blocks it reads, reads the sibling nodes on their paths (16 bytes per level,
shared by nearby rows) and compares the root it computes with the manifest's. A binary tree
reads the fewest digest bytes for a sparse read: a flat digest list verified whole would cost
a digest per block of the whole shard for each shard touched (docs/cache-format.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

BLOCK_BYTES = 64
DIGEST_BYTES = 16
TREES = "rowtrees"
LEAF, NODE = b"\x00", b"\x01"


def has_tree(array: np.ndarray) -> bool:
    """Arrays that get a row tree: numbers with at least one row (strings are read whole)."""
    return array.dtype.kind in "biuf" and array.ndim >= 1 and array.shape[0] > 0


def block_rows(array: np.ndarray) -> int:
    row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    rows = 1
    while rows * row_bytes < BLOCK_BYTES:
        rows *= 2
    return rows


def level_sizes(leaves: int) -> list[int]:
    sizes = [leaves]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def width_of(root: str) -> int:
    """The digest width of a tree, from its root (hex) in the manifest."""
    return len(root) // 2


def leaf_hashes(array: np.ndarray, block: int, width: int = DIGEST_BYTES) -> list[bytes]:
    """The digest of each block of `block` rows (the stored bytes, C order)."""
    raw = np.ascontiguousarray(array).reshape(len(array), -1).view(np.uint8)
    out = []
    for start in range(0, len(raw), block):
        sha = hashlib.sha256(LEAF)
        sha.update(raw[start : start + block].data)
        out.append(sha.digest()[:width])
    return out


def _parent(left: bytes, right: bytes | None) -> bytes:
    return hashlib.sha256(NODE + left + (right or b"")).digest()[: len(left)]


def build_tree(array: np.ndarray, width: int = DIGEST_BYTES) -> tuple[np.ndarray, dict[str, Any]]:
    """The tree array of `array` and what its manifest record keeps (`block`, `root`)."""
    block = block_rows(array)
    level = leaf_hashes(array, block, width)
    nodes = list(level)
    while len(level) > 1:
        level = [
            _parent(level[i], level[i + 1] if i + 1 < len(level) else None)
            for i in range(0, len(level), 2)
        ]
        nodes += level
    tree = np.frombuffer(b"".join(nodes), dtype=np.uint8).reshape(len(nodes), width)
    return tree, {"block": block, "root": level[0].hex()}


def is_tree(name: str) -> bool:
    return name == TREES


def _siblings(leaves: int, wanted: list[int]) -> list[list[int]]:
    """Per level below the root, the nodes to read: siblings of the nodes computed from the
    leaves `wanted` (a few per level: plain Python sets are faster than numpy here)."""
    out = []
    known = set(wanted)
    for size in level_sizes(leaves)[:-1]:
        out.append(sorted(i ^ 1 for i in known if (i ^ 1) not in known and (i ^ 1) < size))
        known = {i // 2 for i in known}
    return out


def proof_rows(leaves: int, wanted: list[int]) -> np.ndarray:
    """The rows of the tree array (sorted) a check of the leaves `wanted` needs."""
    rows, start = [], 0
    for size, siblings in zip(level_sizes(leaves), _siblings(leaves, wanted)):
        rows += [start + i for i in siblings]
        start += size
    return np.array(rows, dtype=np.int64)


def root_of(leaves: int, wanted: list[int], hashes: list[bytes], proof: list[bytes]) -> bytes:
    """The root computed from the hashes of the leaves `wanted` (sorted, unique) and the tree
    nodes `proof` (the rows `proof_rows` named, in that order)."""
    known = dict(zip(wanted, hashes))
    nodes = iter(proof)
    for size, siblings in zip(level_sizes(leaves), _siblings(leaves, wanted)):
        known.update({i: next(nodes) for i in siblings})
        known = {
            p: _parent(known[2 * p], known[2 * p + 1] if 2 * p + 1 < size else None)
            for p in sorted({i // 2 for i in known})
        }
    return known[0]


def with_trees(
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """A shard's arrays with the trees of its numeric arrays added as one array `rowtrees` (one
    after another, by name), and {array: its record's `rows` entry: block, root, tree, start}."""
    trees, rows, start = [], {}, 0
    for name in sorted(arrays):
        if has_tree(arrays[name]) and not is_tree(name):
            tree, info = build_tree(arrays[name], DIGEST_BYTES)
            trees.append(tree)
            rows[name] = {**info, "tree": TREES, "start": start}
            start += len(tree)
    if not trees:
        return dict(arrays), {}
    return {**arrays, TREES: np.concatenate(trees)}, rows


def tree_problems(name: str, array: np.ndarray, trees: np.ndarray | None, info: dict) -> list[str]:
    """What `cache verify` finds wrong with an array's row tree (recomputed from its rows)."""
    if trees is None:
        return [f"{name}'s row digests ({info.get('tree')}) are missing"]
    expected, built = build_tree(array, width_of(str(info.get("root", ""))) or DIGEST_BYTES)
    if built != {"block": info.get("block"), "root": info.get("root")}:
        return [f"{name}'s row digests in the manifest do not match its rows"]
    start = int(info.get("start", 0))
    if not np.array_equal(trees[start : start + len(expected)], expected):
        return [f"{name}'s row digests ({info['tree']}) do not match its rows"]
    return []
