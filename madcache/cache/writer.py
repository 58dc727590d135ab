"""`CacheWriter`: writes a cache shard by shard; any number of writers (ranks) may share one cache.

Commit protocol (docs/cache-format.md): a shard is committed iff its commit record
`commits/NNNNN.json` exists (and its data is on disk). The record is written last, after the
arrays and the index part, by the one writer holding the shard's claim; nothing else is rewritten
while extracting, so W writers never race on one file. `finish` (run once, after every planned
shard is committed) joins the index parts, copies the records into the manifest's shard list and
marks the cache `complete`. A killed writer leaves at most an uncommitted shard, which the next
writer to claim it deletes and redoes, so a resumed extraction equals an uninterrupted one.

The cache may be a local directory or an object-store prefix (`s3://bucket/prefix`,
`madcache.cache.location`): on a local file system a shard is written under a temporary name
and renamed into place; an object store has no rename, so its shards are written in place, and
the commit record written last is still what makes one count.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache import index as cache_index
from madcache.cache.backends import Backend, get_backend
from madcache.cache.commits import (
    CLAIMS,
    COMMITS,
    STAMP,
    check_one_precision,
    claim_key,
    commit_key,
    foreign_problem,
    foreign_shards,
    precision_of,
    read_commits,
    write_commit,
    writer_identity,
)
from madcache.cache.fingerprint import diff_fingerprints, to_json
from madcache.cache.location import Location, open_location
from madcache.cache.manifest import (
    FORMAT_VERSION,
    INDEX,
    INDEX_PARTS,
    MANIFEST,
    STATE_COMPLETE,
    STATE_WRITING,
    array_record,
    check_required,
    create_manifest,
    extraction_digest,
    fingerprint_digest,
    read_manifest,
    shard_counts,
    write_manifest,
)
from madcache.cache.rowtree import with_trees
from madcache.cache.store import Claim, Store, StoreKey
from madcache.cache.verify import shard_problems
from madcache.core.errors import CacheCorruptError, CacheError, FingerprintMismatchError

__all__ = ["CacheWriter", "FORMAT_VERSION", "finish_cache"]


class CacheWriter:
    """Writes shards of one cache directory. Use `CacheWriter.open`; `write_shard` is
    thread-safe. `identity` (rank, world size, host, precision) goes into every commit record."""

    def __init__(
        self,
        root: Path | StoreKey,
        manifest: dict[str, Any],
        backend: Backend,
        store: Store,
        identity: dict[str, Any],
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.backend = backend
        self.store = store
        self.identity = identity
        self._lock = threading.Lock()
        self._claims: dict[int, Claim] = {}

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        manifest: dict[str, Any],
        format: str = "zarr",
        force: bool = False,
        identity: dict[str, Any] | None = None,
    ) -> CacheWriter:
        """Create a cache at `path`, or join the one there if its fingerprint is the same (a
        resume, or another rank of the same extraction).

        A different fingerprint raises `FingerprintMismatchError` listing the differing keys;
        `force=True` deletes the old cache first (one process only: never with other writers).
        Shards committed under another precision than `identity["precision"]` are refused.
        """
        check_required(manifest)
        location = open_location(path)
        root, store = location.root, location.store
        backend = get_backend(format)
        if not location.local and backend.name != "zarr":
            raise CacheError(
                f"{root}: caches in an object store are stored as zarr, not "
                f"{backend.name}: pass --format zarr"
            )
        manifest = to_json(manifest)
        identity = to_json(identity or writer_identity())
        if force:
            _wipe(location, backend)
        if not store.exists(MANIFEST):
            _check_empty(location)
            if location.local:
                root.mkdir(parents=True, exist_ok=True)
            fresh = {**_with_store_keys(manifest, backend), "created": _now()}
            if create_manifest(store, fresh):
                return cls(root, fresh, backend, store, identity)
        existing = read_manifest(store)
        _check_same(root, existing, manifest, backend)
        writer = cls(root, existing, backend, store, identity)
        check_one_precision(read_commits(store), identity.get("precision"), str(root))
        writer._reconcile()
        return writer

    # ------------------------------------------------------------------ state

    def completed_shards(self) -> set[int]:
        """Committed shards (by any writer, this run or an earlier one) whose data is present."""
        return {
            index
            for index in read_commits(self.store)
            if self.backend.exists(self.backend.shard_path(self.root, index))
        }

    def committed_entries(self) -> list[dict[str, Any]]:
        """The commit records of the committed shards, by index (the manifest's `shards`
        once finished)."""
        records = read_commits(self.store)
        return [records[i] for i in sorted(self.completed_shards() & set(records))]

    def is_committed(self, shard: int) -> bool:
        return self.store.exists(commit_key(shard)) and self.backend.exists(
            self.backend.shard_path(self.root, shard)
        )

    def claim(self, shard: int, *, wait: bool = False) -> bool:
        """Take shard `shard` for this writer (False: another live writer holds it). The claim
        is released by `write_shard` for that shard, by `release`, or when the process dies."""
        claim = self.store.claim(claim_key(shard), wait=wait)
        if claim is None:
            return False
        with self._lock:
            self._claims[shard] = claim
        return True

    def release(self, shard: int) -> None:
        with self._lock:
            claim = self._claims.pop(shard, None)
        if claim is not None:
            claim.release()

    def close(self) -> None:
        """Release every claim still held (shards claimed but not written)."""
        for shard in list(self._claims):
            self.release(shard)

    # ------------------------------------------------------------------ writing

    def write_shard(
        self,
        shard: int,
        arrays: Mapping[str, np.ndarray],
        index_columns: Mapping[str, list[Any]] | None = None,
    ) -> None:
        """Store and commit one shard. `arrays` follow docs/cache-format.md (at least
        `example_id`); `index_columns` are per-example values for `index.parquet` (category,
        label, group, ...), one per example in `example_id` order. Claims the shard first
        (waiting for another writer) unless this writer already holds it."""
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        problems = shard_problems(arrays)
        if problems:
            self.release(shard)
            raise ValueError(f"shard {shard} is inconsistent: " + "; ".join(problems))
        counts = shard_counts(arrays)
        arrays, trees = with_trees(arrays)
        records = {name: array_record(a) for name, a in sorted(arrays.items())}
        for name, rows in trees.items():
            records[name]["rows"] = rows
        entry = {
            "index": int(shard),
            "name": self.backend.shard_path(self.root, shard).name,
            **counts,
            "arrays": records,
        }
        if shard not in self._claims:
            self.claim(shard, wait=True)
        try:
            self._reopen_for_writing()
            self.store.delete(commit_key(shard))  # rewriting a shard uncommits it first
            self._remove_uncommitted(shard)
            final = self.backend.shard_path(self.root, shard)
            if self.store.renames:
                temp = self.backend.temp_path(self.root, shard)
                self.backend.write(temp, arrays)
                self._layouts(temp, arrays, entry)
                cache_index.write_part(self.store, shard, arrays, index_columns)
                self.backend.rename(temp, final)
            else:  # no rename: in place, uncommitted until the record exists
                self.backend.write(final, arrays)
                self._layouts(final, arrays, entry)
                cache_index.write_part(self.store, shard, arrays, index_columns)
            entry["bytes"] = self.backend.nbytes(final)
            self._check_claim_held(shard)
            write_commit(
                self.store,
                {
                    **entry,
                    "writer": self.identity,
                    "committed": _now(),
                    STAMP: extraction_digest(self.manifest),
                },
            )
        finally:
            self.release(shard)

    def _layouts(self, path: Path | StoreKey, arrays: dict[str, np.ndarray], entry: dict) -> None:
        """Keep in each row-digested array's `rows` where its rows and its tree's lie (`layout`,
        `Backend.layout_hints`): a reader of a few rows then reads no array metadata."""
        records = entry["arrays"]
        digested = [name for name, record in records.items() if "rows" in record]
        wanted = {n: arrays[n] for name in digested for n in (name, records[name]["rows"]["tree"])}
        hints = self.backend.layout_hints(path, wanted) if wanted else {}
        for name in digested:
            pair = [hints.get(name), hints.get(records[name]["rows"]["tree"])]
            if None not in pair:
                records[name]["rows"]["layout"] = pair

    def read_shard(self, shard: int) -> dict[str, np.ndarray]:
        """Every array of a committed shard (e.g. to recompute split-level results)."""
        if not self.is_committed(shard):
            raise KeyError(f"shard {shard} has not been written")
        return self.backend.read(self.backend.shard_path(self.root, shard))

    def finish(
        self, *, extra: dict[str, Any] | None = None, summary: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Mark the cache complete (see `finish_cache`); returns the final manifest."""
        with self._lock:
            self.manifest = finish_cache(self.root, extra=extra, summary=summary)
        return self.manifest

    def _check_claim_held(self, shard: int) -> None:
        """Refuse to commit a shard whose lease was lost (another writer may redo it)."""
        claim = self._claims.get(shard)
        if claim is not None and claim.lost:
            raise CacheError(
                f"{self.root}: lost the claim on shard {shard} while writing it "
                "(the object store was unreachable for longer than the lease): "
                "rerun the extraction to redo it"
            )

    def _reopen_for_writing(self) -> None:
        """A complete cache that gets a shard (re)written is `writing` again until `finish`."""
        with self._lock:
            if self.manifest.get("state") == STATE_COMPLETE:
                self.manifest = {**self.manifest, "state": STATE_WRITING, "shards": []}
                write_manifest(self.store, self.manifest)

    def _reconcile(self) -> None:
        """Delete what killed writers left (temp shards, shards without a commit record), one
        shard at a time under its claim, so a live writer's work is never touched."""
        committed = set(read_commits(self.store))
        temps = {_temp_index(p) for p in self.backend.temp_paths(self.root)}
        finals = set(self.backend.shards_present(self.root)) - committed
        for shard in sorted((temps - {None}) | finals):
            if self.claim(shard, wait=False):
                if not self.is_committed(shard):
                    self._remove_uncommitted(shard)
                self.release(shard)

    def _remove_uncommitted(self, shard: int) -> None:
        for temp in self.backend.temp_paths(self.root):
            if _temp_index(temp) == shard:
                self.backend.remove(temp)
        self.backend.remove(self.backend.shard_path(self.root, shard))


def finish_cache(
    path: str | Path, *, extra: dict[str, Any] | None = None, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Check that every planned shard is committed, join the index, copy the commit records
    into the manifest's shard list, store `extra` / `summary` and mark the cache complete.

    Idempotent (two ranks finishing at once write the same files). Raises `CacheError` naming
    the shards not committed yet, `CacheCorruptError` for duplicate example ids or a mix of
    precisions."""
    location = open_location(path)
    root, store = location.root, location.store
    manifest = read_manifest(store)
    backend = get_backend(manifest.get("format", "zarr"))
    records = {
        i: r for i, r in read_commits(store).items() if backend.exists(backend.shard_path(root, i))
    }
    _check_planned(root, manifest, records)
    foreign = foreign_shards(records, manifest)
    if foreign:
        raise CacheCorruptError(foreign_problem(foreign, str(root)))
    check_one_precision(records, None, str(root))
    shards = sorted(records)
    cache_index.build_index(store, shards)
    entries = [records[i] for i in shards]
    totals = {
        key: sum(int(e[key]) for e in entries) for key in ("examples", "images", "texts", "words")
    }
    precisions = {tuple(precision_of(e).items()) for e in entries}
    manifest = {
        **manifest,
        **to_json(
            {
                "shards": entries,
                "extra": {**manifest.get("extra", {}), **(extra or {})},
                "summary": summary if summary is not None else manifest.get("summary", {}),
                "totals": totals,
                "precision": dict(precisions.pop()) if precisions else None,
                "state": STATE_COMPLETE,
                "completed": _now(),
            }
        ),
    }
    write_manifest(store, manifest)
    return manifest


def _check_planned(
    root: Path | StoreKey, manifest: dict[str, Any], records: Mapping[int, Any]
) -> None:
    planned = manifest.get("num_shards")
    if planned is None:
        return
    missing = [i for i in range(int(planned)) if i not in records]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise CacheError(
            f"{root}: {len(missing)} of {planned} shards are not committed yet "
            f"(shards {shown}): some ranks are still running or were killed. "
            "Rerun the extraction (any --world-size resumes), then `madcache "
            f"cache finish {root}`"
        )
    beyond = sorted(set(records) - set(range(int(planned))))
    if beyond:
        raise CacheCorruptError(
            f"{root}: commit records for shards {beyond[:5]} outside the "
            f"plan of {planned} shards: run `madcache cache verify {root}`"
        )


def _check_same(
    root: Path | StoreKey, existing: dict[str, Any], manifest: dict[str, Any], backend: Backend
) -> None:
    differences = diff_fingerprints(existing.get("fingerprint", {}), manifest["fingerprint"])
    if differences:
        raise FingerprintMismatchError(
            f"{root} holds a cache built with a different fingerprint (cache != requested):"
            "\n  " + "\n  ".join(differences) + "\nUse --force to overwrite it, or choose "
            "another --out.",
            differences,
        )
    if existing.get("format", backend.name) != backend.name:
        raise CacheError(
            f"{root} is stored as {existing.get('format')}, not "
            f"{backend.name}: pass that format, --force, or another --out"
        )


def _with_store_keys(manifest: dict[str, Any], backend: Backend) -> dict[str, Any]:
    return {
        **manifest,
        "format": backend.name,
        "format_version": FORMAT_VERSION,
        "fingerprint_digest": fingerprint_digest(manifest),
        "state": STATE_WRITING,
        "shards": [],
    }


def _temp_index(path: Path | StoreKey) -> int | None:
    """The shard number of a temp shard name (`.tmp-shard-00003.zarr.<pid>`)."""
    digits = path.name[len(".tmp-shard-") :].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


def _check_empty(location: Location) -> None:
    """Refuse a path holding anything but another writer's manifest being created."""
    root = location.root
    if isinstance(root, StoreKey):  # objects, and still no manifest (another writer's is fine)
        if location.store.list("") and not location.store.exists(MANIFEST):
            raise CacheError(
                f"{root} holds objects but no {MANIFEST}: it is not a madcache "
                "cache; choose another --out"
            )
        return
    creating = f".{MANIFEST}.tmp-"
    if root.exists() and (
        not root.is_dir() or any(not p.name.startswith(creating) for p in root.iterdir())
    ):
        raise CacheError(
            f"{root} exists and is not a madcache cache (no {MANIFEST}): choose another --out"
        )


def _wipe(location: Location, backend: Backend) -> None:
    """Delete the cache at `root` (only a cache: a directory with a manifest, or empty)."""
    root = location.root
    if isinstance(root, StoreKey):
        if not location.store.exists(MANIFEST):
            _check_empty(location)
            return
        for key in location.store.list(""):
            if key != MANIFEST:
                location.store.delete_tree(key)
        location.store.delete(MANIFEST)  # last: until then it is still a cache
        return
    if not root.exists():
        return
    if not (root / MANIFEST).is_file():
        _check_empty(location)
        return
    for path in list(backend.shards_present(root).values()) + backend.temp_paths(root):
        backend.remove(path)
    for name in (MANIFEST, INDEX):
        (root / name).unlink(missing_ok=True)
    for folder in (INDEX_PARTS, COMMITS, CLAIMS):
        shutil.rmtree(root / folder, ignore_errors=True)
    for path in [*root.glob("shard-*"), *root.glob(".tmp-shard-*")]:  # other formats' shards
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
