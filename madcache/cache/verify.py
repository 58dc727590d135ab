"""Cache verification: every stored byte against the manifest, and the shard layout's rules.

`shard_problems` checks one shard's arrays against the layout (docs/cache-format.md); the writer
runs it before storing a shard, `verify_cache` runs it again on what is on disk, together with
checksums, the shard list, the commit records and the index. `open_problems` is the cheap subset
every reader runs when it opens a cache (no shard is read): the full pass stays in `verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache.backends import Backend, get_backend
from madcache.cache.commits import (
    STAMP,
    check_one_precision,
    foreign_problem,
    foreign_shards,
    read_commits,
)
from madcache.cache.index import read_index, read_table
from madcache.cache.location import open_location
from madcache.cache.manifest import (
    INDEX,
    STATE_COMPLETE,
    array_checksum,
    dtype_name,
    fingerprint_digest,
    read_manifest,
)
from madcache.cache.rowtree import is_tree, tree_problems
from madcache.cache.store import Store, StoreKey
from madcache.core.errors import CacheError

IMAGE_ARRAYS = ("image_id", "image_feat")
TEXT_ARRAYS = ("text_key", "text_eos", "text_truncated")
WORD_ARRAYS = ("word_feat", "word_span", "word_truncated", "word_vr", "word_yake", "word_score")
EXAMPLE_ARRAYS = ("example_image", "example_texts", "candidates", "similarity")


def shard_problems(arrays: dict[str, np.ndarray]) -> list[str]:
    """Layout problems of one shard's arrays (empty list = consistent)."""
    if "example_id" not in arrays:
        return ["no 'example_id' array"]
    n_ex = len(arrays["example_id"])
    problems = _same_rows(
        arrays,
        [n for n in arrays if n in EXAMPLE_ARRAYS or n.startswith("logits/")],
        n_ex,
        "examples",
    )
    n_img = _rows(arrays, IMAGE_ARRAYS)
    n_txt = _rows(arrays, TEXT_ARRAYS)
    problems += _same_rows(arrays, IMAGE_ARRAYS, n_img, "images")
    problems += _same_rows(arrays, TEXT_ARRAYS, n_txt, "texts")
    if "example_image" in arrays and n_img is not None:
        problems += _in_range(arrays["example_image"], n_img, "example_image", "images")
    if "example_texts" in arrays:
        texts = arrays["example_texts"]
        if texts.ndim != 2:
            problems.append(f"example_texts has shape {texts.shape}, expected [n_ex, C]")
        if n_txt is not None:
            problems += _in_range(texts, n_txt, "example_texts", "texts")
    return problems + _word_problems(arrays, n_txt)


def _rows(arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> int | None:
    present = [len(arrays[n]) for n in names if n in arrays]
    return present[0] if present else None


def _same_rows(arrays: dict[str, np.ndarray], names, expected: int | None, what: str) -> list[str]:
    return [
        f"{name} has {len(arrays[name])} rows, expected {expected} ({what})"
        for name in names
        if name in arrays and expected is not None and len(arrays[name]) != expected
    ]


def _in_range(values: np.ndarray, limit: int, name: str, what: str) -> list[str]:
    if values.size and (values.min() < 0 or values.max() >= limit):
        return [
            f"{name} points outside the shard's {limit} {what} "
            f"(range {values.min()}..{values.max()})"
        ]
    return []


def _word_problems(arrays: dict[str, np.ndarray], n_txt: int | None) -> list[str]:
    words = [n for n in WORD_ARRAYS if n in arrays]
    if "word_offsets" not in arrays:
        return ["per-word arrays without word_offsets"] if words else []
    offsets = arrays["word_offsets"]
    problems = []
    if n_txt is not None and len(offsets) != n_txt + 1:
        problems.append(
            f"word_offsets has {len(offsets)} entries, expected {n_txt + 1} (texts + 1)"
        )
    if len(offsets) == 0 or offsets[0] != 0:
        problems.append("word_offsets does not start at 0")
    elif np.any(np.diff(offsets) < 0):
        problems.append("word_offsets is not monotone")
    n_words = _rows(arrays, WORD_ARRAYS)
    if len(offsets) and n_words is not None and offsets[-1] != n_words:
        problems.append(f"word_offsets ends at {offsets[-1]}, but there are {n_words} words")
    return problems + _same_rows(arrays, WORD_ARRAYS, n_words, "words")


def verify_cache(path: str | Path) -> list[str]:
    """Every problem found in the cache at `path` (empty list = the cache is sound).

    Checks: state complete; fingerprint digest; shards listed == shards present == commit
    records; one precision; every array's dtype, shape and sha256 against the manifest, and its
    row digests (format version 3) against its rows; each
    shard's layout; the index covers every example row exactly once with the ids stored in the
    shards. `path` is a directory or an object-store URL.
    """
    location = open_location(path)  # an unusable object store is an error, not a finding
    root, store = location.root, location.store
    try:
        manifest = read_manifest(store)
        backend = get_backend(manifest.get("format", "zarr"))
    except CacheError as exc:
        return [str(exc)]
    problems = _manifest_problems(manifest)
    complete = manifest.get("state") == STATE_COMPLETE
    try:  # while writing, the committed shards are the ones with a commit record
        listed = (
            {int(s["index"]): s for s in manifest.get("shards", [])}
            if complete
            else read_commits(store)
        )
    except CacheError as exc:
        return problems + [str(exc)]
    present = backend.shards_present(root)
    problems += [
        f"shard {i} is listed in the manifest but missing on disk"
        for i in sorted(set(listed) - set(present))
    ]
    unlisted = "listed in the manifest" if complete else "committed"
    problems += [
        f"shard {i} is on disk but not {unlisted} ({present[i].name})"
        for i in sorted(set(present) - set(listed))
    ]
    foreign = foreign_shards(listed, manifest)
    if foreign:
        problems.append(foreign_problem(foreign, "the cache"))
    if complete:
        problems += _commit_problems(store, listed, manifest)
    stored_ids: dict[int, np.ndarray] = {}
    for index in sorted(set(listed) & set(present)):
        found, ids = _shard_check(backend, present[index], listed[index])
        problems += [f"shard {index}: {p}" for p in found]
        if ids is not None:
            stored_ids[index] = ids
    if manifest.get("state") == STATE_COMPLETE:
        problems += _index_problems(store, stored_ids, listed)
    return problems


def open_problems(
    root: Path | StoreKey, manifest: dict[str, Any], backend: Backend, index_table
) -> list[str]:
    """What a reader checks when it opens a complete cache, without reading a shard: the
    fingerprint digest, the planned shards listed once each and present on disk, one
    precision, and an index (`index_table`, None if missing or unreadable) that covers every
    shard's rows exactly once with the example ids the manifest recorded for that shard."""
    problems = _manifest_problems(manifest)
    entries = manifest.get("shards", [])
    listed = {int(e["index"]): e for e in entries}
    if len(listed) != len(entries):
        problems.append("the manifest lists a shard twice")
    planned = manifest.get("num_shards")
    if planned is not None and sorted(listed) != list(range(int(planned))):
        problems.append(
            f"the manifest lists shards {_span(sorted(listed))}, planned 0..{int(planned) - 1}"
        )
    missing = [i for i in sorted(listed) if not backend.exists(root / listed[i]["name"])]
    if missing:
        problems.append(f"shard(s) {_span(missing)} listed in the manifest are missing on disk")
    foreign = foreign_shards(listed, manifest)
    if foreign:
        problems.append(foreign_problem(foreign, "the cache"))
    try:
        check_one_precision(listed, None, "the cache")
    except CacheError as exc:
        problems.append(str(exc))
    if index_table is None:
        return problems + [f"{INDEX} is missing or unreadable"]
    return problems + _index_matches_manifest(index_table, listed)


def _index_matches_manifest(table, listed: dict[int, dict[str, Any]]) -> list[str]:
    """Per shard, the index's rows are 0..n-1 once each, and its ids (in row order) hash to the
    `example_id` checksum the manifest recorded for that shard."""
    ids = np.array(table.column("example_id").to_pylist(), dtype=str)
    shards = table.column("shard").to_numpy()
    rows = table.column("row").to_numpy()
    problems = []
    if len(np.unique(ids)) != len(ids):
        problems.append(f"{INDEX} lists {len(ids) - len(np.unique(ids))} duplicate example ids")
    unknown = sorted(set(shards.tolist()) - set(listed))
    if unknown:
        problems.append(f"{INDEX} points at shards not in the manifest: {unknown[:5]}")
    for shard, entry in sorted(listed.items()):
        where = np.flatnonzero(shards == shard)
        order = where[np.argsort(rows[where], kind="stable")]
        n_ex = int(entry.get("examples", 0))
        if not np.array_equal(rows[order], np.arange(n_ex)):
            problems.append(
                f"{INDEX} does not cover shard {shard}'s {n_ex} example rows "
                f"exactly once ({len(where)} entries)"
            )
            continue
        recorded = entry.get("arrays", {}).get("example_id", {}).get("sha256")
        if recorded and array_checksum(ids[order]) != recorded:
            problems.append(
                f"{INDEX}: the ids of shard {shard} are not the ids the manifest "
                "recorded for that shard (index from another extraction?)"
            )
    return problems


def _commit_problems(
    store: Store, listed: dict[int, dict[str, Any]], manifest: dict[str, Any]
) -> list[str]:
    """A finished cache's shard list equals its commit records, stamped by its extraction."""
    try:
        records = read_commits(store)
    except CacheError as exc:
        return [str(exc)]
    if not records:
        return []  # a cache finished before commit records existed
    foreign = foreign_shards(records, manifest)
    problems = [foreign_problem(foreign, "the commit records")] if foreign else []
    problems += [f"shard {i} has no commit record" for i in sorted(set(listed) - set(records))]
    problems += [
        f"commit record of shard {i} is not in the manifest"
        for i in sorted(set(records) - set(listed))
    ]
    problems += [
        f"shard {i}: the commit record and the manifest disagree"
        for i in sorted(set(listed) & set(records))
        if records[i].get("arrays") != listed[i].get("arrays")
        or records[i].get(STAMP) != listed[i].get(STAMP)
    ]
    try:
        check_one_precision(records, None, "the cache")
    except CacheError as exc:
        problems.append(str(exc))
    return problems


def _span(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")


def read_index_or_none(store: Store):
    try:
        return read_index(store)
    except Exception:  # a missing or damaged parquet file fails in many ways
        return None


def _manifest_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    if manifest.get("state") != STATE_COMPLETE:
        problems.append(
            f"the cache is incomplete (state {manifest.get('state')!r}): resume "
            "the extraction with the same command"
        )
    if "fingerprint" not in manifest:
        problems.append("the manifest has no fingerprint")
    elif manifest.get("fingerprint_digest") != fingerprint_digest(manifest):
        problems.append("fingerprint_digest does not match the fingerprint (manifest edited?)")
    return problems


def _shard_check(
    backend: Backend, path: Path | StoreKey, entry: dict[str, Any]
) -> tuple[list[str], np.ndarray | None]:
    try:
        arrays = backend.read(path)
    except Exception as exc:  # a damaged file can fail in any decoder
        return [f"unreadable ({type(exc).__name__}: {exc})"], None
    expected = entry.get("arrays", {})
    problems = [f"array {name} is missing" for name in sorted(set(expected) - set(arrays))]
    problems += [
        f"array {name} is not in the manifest" for name in sorted(set(arrays) - set(expected))
    ]
    for name in sorted(set(expected) & set(arrays)):
        found = array_problems(name, arrays[name], expected[name])
        problems += found
        if "rows" in expected[name] and not found:  # rows as recorded: do their digests agree?
            info = expected[name]["rows"]
            problems += tree_problems(name, arrays[name], arrays.get(info.get("tree")), info)
    problems += shard_problems({n: a for n, a in arrays.items() if not is_tree(n)})
    return problems, arrays.get("example_id")


def array_problems(name: str, array: np.ndarray, record: dict[str, Any]) -> list[str]:
    """What differs between a stored array and its manifest record (shape, dtype, sha256)."""
    problems = []
    if list(array.shape) != list(record["shape"]):
        problems.append(f"{name} has shape {list(array.shape)}, manifest says {record['shape']}")
    if dtype_name(array) != record["dtype"]:
        problems.append(f"{name} has dtype {dtype_name(array)}, manifest says {record['dtype']}")
    if array_checksum(array) != record["sha256"]:
        problems.append(f"{name} checksum mismatch (stored bytes changed)")
    return problems


def _index_problems(
    store: Store, stored_ids: dict[int, np.ndarray], listed: dict[int, dict[str, Any]]
) -> list[str]:
    try:
        table = read_table(store, INDEX, columns=["example_id", "shard", "row"])
    except FileNotFoundError:
        return [f"{INDEX} is missing"]
    except Exception as exc:
        return [f"{INDEX} is unreadable ({type(exc).__name__}: {exc})"]
    ids = table.column("example_id").to_pylist()
    shards = table.column("shard").to_numpy()
    rows = table.column("row").to_numpy()
    problems = []
    if len(set(ids)) != len(ids):
        problems.append(f"{INDEX} lists {len(ids) - len(set(ids))} duplicate example ids")
    for shard, entry in sorted(listed.items()):
        mine = np.sort(rows[shards == shard])
        n_ex = int(entry.get("examples", 0))
        if not np.array_equal(mine, np.arange(n_ex)):
            problems.append(
                f"{INDEX} does not cover shard {shard}'s {n_ex} example rows "
                f"exactly once ({len(mine)} entries)"
            )
        elif shard in stored_ids:
            problems += _ids_match(INDEX, shard, ids, shards, rows, stored_ids[shard])
    unknown = sorted(set(shards.tolist()) - set(listed))
    if unknown:
        problems.append(f"{INDEX} points at shards not in the manifest: {unknown[:5]}")
    return problems


def _ids_match(
    name: str, shard: int, ids: list[str], shards: np.ndarray, rows: np.ndarray, stored: np.ndarray
) -> list[str]:
    where = np.flatnonzero(shards == shard)
    wrong = [i for i in where if rows[i] >= len(stored) or ids[i] != stored[rows[i]]]
    if wrong:
        return [
            f"{name}: {len(wrong)} ids of shard {shard} differ from the shard's example_id "
            f"(e.g. {ids[wrong[0]]!r})"
        ]
    return []
