"""`CacheWriter`: writes a cache shard by shard, atomically, and resumes a killed run.

A shard is complete or absent: its arrays go to a temporary name (`.tmp-shard-00007.zarr.<pid>`)
that is renamed into place when whole, then the manifest (rewritten atomically) records its
shapes and checksums. On reopening, a shard counts as complete only if it is both on disk and in
the manifest; anything else (a temp shard, a renamed shard whose manifest update was lost) is
removed and redone, so a resumed extraction equals an uninterrupted one.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from madcache.cache import index as cache_index
from madcache.cache.backends import Backend, get_backend
from madcache.cache.fingerprint import diff_fingerprints, to_json
from madcache.cache.manifest import (FORMAT_VERSION, INDEX, INDEX_PARTS, MANIFEST,
                                     STATE_COMPLETE, STATE_WRITING, array_record, check_required,
                                     fingerprint_digest, read_manifest, shard_counts,
                                     write_manifest)
from madcache.cache.verify import shard_problems
from madcache.core.errors import CacheError, FingerprintMismatchError

__all__ = ["CacheWriter", "FORMAT_VERSION"]


class CacheWriter:
    """Writes one cache directory. Use `CacheWriter.open`; `write_shard` is thread-safe."""

    def __init__(self, root: Path, manifest: dict[str, Any], backend: Backend) -> None:
        self.root = root
        self.manifest = manifest
        self.backend = backend
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, *, manifest: dict[str, Any], format: str = "zarr",
             force: bool = False) -> "CacheWriter":
        """Create a cache at `path`, or resume the one there if its fingerprint is the same.

        A different fingerprint raises `FingerprintMismatchError` listing the differing keys;
        `force=True` deletes the old cache first.
        """
        check_required(manifest)
        root = Path(path)
        backend = get_backend(format)
        manifest = to_json(manifest)
        if force:
            _wipe(root, backend)
        if (root / MANIFEST).is_file():
            return cls._resume(root, manifest, backend)
        _check_empty(root)
        root.mkdir(parents=True, exist_ok=True)
        manifest.setdefault("created", _now())
        writer = cls(root, _with_store_keys(manifest, backend, []), backend)
        writer._save()
        return writer

    @classmethod
    def _resume(cls, root: Path, manifest: dict[str, Any], backend: Backend) -> "CacheWriter":
        existing = read_manifest(root)
        differences = diff_fingerprints(existing.get("fingerprint", {}), manifest["fingerprint"])
        if differences:
            raise FingerprintMismatchError(
                f"{root} holds a cache built with a different fingerprint (cache != requested):"
                "\n  " + "\n  ".join(differences) + "\nUse --force to overwrite it, or choose "
                "another --out.", differences)
        if existing.get("format", backend.name) != backend.name:
            raise CacheError(f"{root} is stored as {existing.get('format')}, not "
                             f"{backend.name}: pass that format, --force, or another --out")
        entries = _reconcile(root, backend, existing.get("shards", []))
        manifest.setdefault("created", existing.get("created", _now()))
        writer = cls(root, _with_store_keys(manifest, backend, entries), backend)
        if existing.get("state") == STATE_COMPLETE and len(entries) == len(existing["shards"]):
            writer.manifest.update({k: existing[k] for k in ("state", "extra", "summary")
                                    if k in existing})
        writer._save()
        return writer

    def completed_shards(self) -> set[int]:
        """Shards already written (by this run or an earlier one)."""
        with self._lock:
            return {int(entry["index"]) for entry in self.manifest["shards"]}

    def write_shard(self, shard: int, arrays: Mapping[str, np.ndarray],
                    index_columns: Mapping[str, list[Any]] | None = None) -> None:
        """Store one shard atomically. `arrays` follow docs/cache-format.md (at least
        `example_id`); `index_columns` are per-example values for `index.parquet` (category,
        label, group, ...), one per example in `example_id` order."""
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        problems = shard_problems(arrays)
        if problems:
            raise ValueError(f"shard {shard} is inconsistent: " + "; ".join(problems))
        entry = {"index": int(shard), "name": self.backend.shard_path(self.root, shard).name,
                 **shard_counts(arrays),
                 "arrays": {name: array_record(a) for name, a in sorted(arrays.items())}}
        temp = self.backend.temp_path(self.root, shard)
        self.backend.remove(temp)
        self.backend.write(temp, arrays)
        cache_index.write_part(self.root, shard, arrays, index_columns)
        final = self.backend.shard_path(self.root, shard)
        self.backend.rename(temp, final)
        entry["bytes"] = self.backend.nbytes(final)
        with self._lock:
            others = [e for e in self.manifest["shards"] if int(e["index"]) != shard]
            self.manifest["shards"] = sorted([*others, entry], key=lambda e: e["index"])
            self.manifest["state"] = STATE_WRITING
            self._save()

    def read_shard(self, shard: int) -> dict[str, np.ndarray]:
        """Every array of a completed shard (e.g. to recompute split-level results)."""
        if shard not in self.completed_shards():
            raise KeyError(f"shard {shard} has not been written")
        return self.backend.read(self.backend.shard_path(self.root, shard))

    def finish(self, *, extra: dict[str, Any] | None = None,
               summary: dict[str, Any] | None = None) -> None:
        """Build `index.parquet`, store `extra` / `summary`, mark the cache complete.
        Duplicate example ids across shards raise `CacheCorruptError`."""
        with self._lock:
            shards = [int(e["index"]) for e in self.manifest["shards"]]
            cache_index.build_index(self.root, shards)
            totals = {key: sum(int(e[key]) for e in self.manifest["shards"])
                      for key in ("examples", "images", "texts", "words")}
            self.manifest.update(to_json({
                "extra": extra or {}, "summary": summary or {}, "totals": totals,
                "state": STATE_COMPLETE, "completed": _now()}))
            self._save()

    def _save(self) -> None:
        write_manifest(self.root, self.manifest)


def _with_store_keys(manifest: dict[str, Any], backend: Backend,
                     entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {**manifest, "format": backend.name, "format_version": FORMAT_VERSION,
            "fingerprint_digest": fingerprint_digest(manifest), "state": STATE_WRITING,
            "shards": entries}


def _reconcile(root: Path, backend: Backend, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep shards both listed and present; delete temp shards and unlisted shards."""
    for temp in backend.temp_paths(root):
        backend.remove(temp)
    present = backend.shards_present(root)
    kept = [e for e in listed if int(e["index"]) in present]
    for index in set(present) - {int(e["index"]) for e in kept}:
        backend.remove(present[index])
    return kept


def _check_empty(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CacheError(f"{root} exists and is not a madcache cache (no {MANIFEST}): "
                         "choose another --out")


def _wipe(root: Path, backend: Backend) -> None:
    """Delete the cache at `root` (only a cache: a directory with a manifest, or empty)."""
    if not root.exists():
        return
    if not (root / MANIFEST).is_file():
        _check_empty(root)
        return
    for path in list(backend.shards_present(root).values()) + backend.temp_paths(root):
        backend.remove(path)
    for name in (MANIFEST, INDEX):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / INDEX_PARTS, ignore_errors=True)
    for path in [*root.glob("shard-*"), *root.glob(".tmp-shard-*")]:  # other formats' shards
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
