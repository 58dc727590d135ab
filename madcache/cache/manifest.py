"""`manifest.json`: the one file that says what a cache is, and what is in it.

Reading it never needs the shards; every update replaces it whole (`Store.write_bytes`), so a
reader or a killed writer never sees half a manifest. The first writer of a cache creates it with
`Store.create` (only if absent), so writers started at once agree on one manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache.backends import as_unicode, is_string_array
from madcache.cache.fingerprint import canonical_json, digest
from madcache.cache.location import as_store
from madcache.cache.store import LocalStore, Store, StoreKey
from madcache.core.errors import CacheCorruptError, CacheNotFoundError

FORMAT_VERSION = 3
# versions whose stored values mean what this madcache's do (3 added row digests to 2's
# values; a version 2 cache is verified whole-array per shard, docs/cache-format.md)
READABLE_VERSIONS = (2, 3)
MANIFEST = "manifest.json"
INDEX = "index.parquet"
INDEX_PARTS = "index-parts"
STATE_WRITING = "writing"
STATE_COMPLETE = "complete"
REQUIRED_KEYS = ("fingerprint", "dataset", "split", "num_choices", "dims", "settings")


def read_manifest(root: str | Path | Store | StoreKey) -> dict[str, Any]:
    """The manifest of the cache at `root`; `CacheNotFoundError` if there is none."""
    store = as_store(root)
    try:
        data = store.read_bytes(MANIFEST)
    except FileNotFoundError:
        raise CacheNotFoundError(
            f"no cache at {_where(store)}: {_missing_hint(store)}. Build "
            f"one with `madcache extract ... --out {_where(store)}` or "
            "check the path."
        ) from None
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CacheCorruptError(
            f"{_where(store)}/{MANIFEST}: not valid JSON ({exc}); re-run "
            "the extraction with --force"
        ) from None


def _where(store: Store) -> str:
    return store.url


def _missing_hint(store: Store) -> str:
    if not isinstance(store, LocalStore):
        return (
            "no manifest.json under that prefix (not a madcache cache, or an extraction "
            "that never started writing)"
        )
    if not store.root.is_dir():
        return "no such directory"
    return (
        "the directory exists but holds no manifest.json (not a madcache cache, or an "
        "extraction that never started writing)"
    )


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    text = json.dumps(json.loads(canonical_json(manifest)), indent=1, sort_keys=True)
    return (text + "\n").encode("utf-8")


def write_manifest(root: str | Path | Store | StoreKey, manifest: dict[str, Any]) -> None:
    """Replace `manifest.json` whole."""
    as_store(root).write_bytes(MANIFEST, manifest_bytes(manifest))


def create_manifest(root: str | Path | Store | StoreKey, manifest: dict[str, Any]) -> bool:
    """Write `manifest.json` only if there is none yet (False if another writer was first)."""
    return as_store(root).create(MANIFEST, manifest_bytes(manifest))


def check_required(manifest: dict[str, Any]) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"a cache manifest needs the keys {', '.join(missing)}")
    if not isinstance(manifest["fingerprint"], dict):
        raise ValueError("manifest['fingerprint'] must be a dict of named parts")


# What an extraction fixes before its first shard. Every commit record carries the digest of
# these keys (`extraction_digest`), so a shard of another extraction (other teachers, settings
# or data) cannot join a cache, and a manifest edited afterwards no longer matches its shards.
IDENTITY_KEYS = (
    "fingerprint",
    "fingerprint_digest",
    "teachers",
    "dims",
    "dataset",
    "split",
    "num_choices",
    "num_examples",
    "num_shards",
    "dtype",
    "logits",
    "default_logits",
    "kind",
)


def extraction_digest(manifest: Mapping[str, Any]) -> str:
    return digest({key: manifest.get(key) for key in IDENTITY_KEYS})


def fingerprint_digest(manifest: dict[str, Any]) -> str:
    return digest(manifest["fingerprint"])


def cache_digest(manifest: Mapping[str, Any]) -> str | None:
    """The digest a run's provenance records for the cache it read (None without a fingerprint)."""
    if manifest.get("fingerprint_digest"):
        return manifest["fingerprint_digest"]
    return fingerprint_digest(dict(manifest)) if "fingerprint" in manifest else None


def array_checksum(array: np.ndarray) -> str:
    """sha256 over dtype, shape and values. Strings hash their UTF-8 text (length-prefixed),
    so the check does not depend on how a backend pads or encodes them."""
    sha = hashlib.sha256()
    sha.update(repr(tuple(array.shape)).encode())
    if is_string_array(array):
        sha.update(b"str")
        for value in as_unicode(array).ravel().tolist():
            data = value.encode("utf-8")
            sha.update(len(data).to_bytes(8, "little") + data)
    else:
        sha.update(array.dtype.str.encode())
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def dtype_name(array: np.ndarray) -> str:
    return "str" if is_string_array(array) else array.dtype.name


def array_record(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": dtype_name(array), "sha256": array_checksum(array)}


def shard_counts(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Rows of each kind in a shard (examples, images, texts, words)."""

    def rows(name: str) -> int:
        return int(arrays[name].shape[0]) if name in arrays else 0

    offsets = arrays.get("word_offsets")
    texts = (
        rows("text_eos")
        or rows("text_key")
        or (len(offsets) - 1 if offsets is not None and len(offsets) else 0)
    )
    return {
        "examples": rows("example_id"),
        "images": rows("image_id") or rows("image_feat"),
        "texts": texts,
        "words": int(offsets[-1]) if offsets is not None and len(offsets) else 0,
    }
