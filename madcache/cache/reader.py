"""Read-only access to a cache: `open_cache(path) -> Cache`, `Cache.load_targets(ids)`.

A reader never writes, locks or repairs anything, so any number of processes (one per seed)
can read one cache at once. `Cache` finds each example id's shard and row in the index;
gathering the targets of those rows is the engine in `madcache.cache.gather` (one pass, shard by
shard in order, batched reads, then gathered in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache import index as cache_index
from madcache.cache.backends import Backend, get_backend
from madcache.cache.commits import read_commits
from madcache.cache.fingerprint import diff_fingerprints, resolved_read_options
from madcache.cache.gather import ChooseWords, gather_targets
from madcache.cache.location import as_store, open_location
from madcache.cache.manifest import (
    READABLE_VERSIONS,
    STATE_COMPLETE,
    fingerprint_digest,
    read_manifest,
)
from madcache.cache.store import Store, StoreKey
from madcache.cache.targets import Targets
from madcache.cache.verified import VerifiedShards
from madcache.cache.verify import open_problems, read_index_or_none
from madcache.core.errors import (
    CacheCorruptError,
    CacheError,
    FingerprintMismatchError,
    MadcacheError,
    MissingTargetError,
)

ROW_INDEXES = {"example_image": "images", "example_texts": "texts"}


def open_cache(path: str | Path, *, allow_incomplete: bool = False, check: bool = True) -> Cache:
    """Open the cache at `path` read-only. `CacheNotFoundError` if there is none; an
    incomplete cache (extraction still running or killed) only with `allow_incomplete`.

    A complete cache is checked cheaply before use (no shard is read): shards listed and on
    disk, one precision, an index whose rows and ids match what the manifest recorded per shard.
    A damaged one raises `CacheCorruptError` telling to run `madcache cache verify`
    (`check=False` skips this, for `madcache cache info` on a damaged cache).

    `path` is a directory or an object-store URL (`s3://bucket/prefix`)."""
    location = open_location(path)
    root = location.root
    manifest = read_manifest(location.store)
    backend = get_backend(manifest.get("format", "zarr"))
    if manifest.get("state") != STATE_COMPLETE:
        if not allow_incomplete:
            raise CacheError(_incomplete_message(root, manifest))
        return Cache(root, manifest, backend)
    if not check:
        return Cache(root, manifest, backend)
    table = read_index_or_none(location.store)
    problems = open_problems(root, manifest, backend, table)
    if problems:
        raise CacheCorruptError(
            f"the cache at {root} is damaged: {'; '.join(problems[:3])}"
            f"{' ...' if len(problems) > 3 else ''}. Run `madcache cache "
            f"verify {root}` for a full check; rerunning the extraction "
            "command redoes missing shards, --force rebuilds it"
        )
    return Cache(root, manifest, backend, index=table)


def _incomplete_message(root: Path | StoreKey, manifest: dict[str, Any]) -> str:
    done = len(read_commits(as_store(root)))
    planned = manifest.get("num_shards", "?")
    if done == planned:
        return (
            f"the cache at {root} has all {done} shards committed but was not finished: "
            f"run `madcache cache finish {root}`"
        )
    return (
        f"the cache at {root} is incomplete (state {manifest.get('state')!r}, {done}/"
        f"{planned} shards committed): resume the extraction with the same command (any "
        "number of ranks), or open it with allow_incomplete=True"
    )


class Cache:
    """An opened cache. Cheap to create; shards are read only when asked."""

    def __init__(
        self, path: Path | StoreKey, manifest: dict[str, Any], backend: Backend, index=None
    ) -> None:
        self.path = path  # a directory, or the root of an object store
        self.store: Store = as_store(path)
        self.manifest = manifest
        self.backend = backend
        self._index = index
        # the index was checked against the manifest's sha256 of each shard's ids (open_cache)
        self.index_checked = index is not None
        self._shards: list[dict[str, Any]] | None = None
        self.verified = VerifiedShards(self)  # arrays checked against their sha256s

    @property
    def format(self) -> str:
        return self.backend.name

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    @property
    def num_choices(self) -> int:
        return int(self.manifest["num_choices"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The manifest's shard list; while writing, the shards committed so far."""
        if self._shards is None:
            entries = (
                self.manifest.get("shards", [])
                if self.complete
                else read_commits(self.store).values()
            )
            self._shards = sorted(entries, key=lambda e: int(e["index"]))
        return self._shards

    @property
    def complete(self) -> bool:
        return self.manifest.get("state") == STATE_COMPLETE

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, format={self.format!r}, shards={len(self.shards)})"

    # ------------------------------------------------------------------ index

    def index(self):
        """`index.parquet` as a pyarrow Table (example_id, shard, row, image_id, ...)."""
        if self._index is None:
            self._index = (
                cache_index.read_index(self.store)
                if self.complete
                else cache_index.read_parts(self.store, [int(e["index"]) for e in self.shards])
            )
        return self._index

    def example_ids(self) -> list[str]:
        return self.index().column("example_id").to_pylist()

    def _location_map(self) -> dict[str, tuple[int, int]]:
        """{example id: (shard, row)} (benchmarks and tests; `_locate` needs no dict)."""
        table = self.index()
        return dict(
            zip(
                table.column("example_id").to_pylist(),
                zip(table.column("shard").to_pylist(), table.column("row").to_pylist()),
            )
        )

    def _locate(self, example_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The shard and row of each id: a hash lookup in the index's id column (pyarrow), no
        Python object per cached example."""
        found = self._lookup(example_ids)
        if found.null_count:
            missing = [eid for eid, at in zip(example_ids, found.is_null().to_pylist()) if at]
            shown = ", ".join(repr(e) for e in missing[:5])
            raise MissingTargetError(
                f"{len(missing)} of {len(example_ids)} example ids are not in the cache at "
                f"{self.path} (e.g. {shown}): was it extracted for this dataset split (and "
                "without --limit)?"
            )
        return self._rows_at(found)

    def _locate_known(self, example_ids: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The ids the index holds (in order), and their shards and rows."""
        found = self._lookup(example_ids)
        held = found.is_valid().to_pylist()
        return [eid for eid, ok in zip(example_ids, held) if ok], *self._rows_at(found.drop_null())

    def _lookup(self, example_ids: list[str]):
        """Each id's row in the index (an Arrow int64 array, null where the index lacks it).
        The index is probed with a hash table of the ids asked for, not the other way round:
        hashing a 425,846-id index took 55 ms for each lookup of a 640-example subset, probing
        it 15 ms (docs/performance.md)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self.index().column("example_id")
        query = pa.array(example_ids, pa.string())
        unique = pc.unique(query)
        where = pc.index_in(column, value_set=unique).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(~np.isnan(where))  # null -> NaN: index rows holding an id asked for
        position = np.full(len(unique), -1, dtype=np.int64)
        position[where[rows].astype(np.int64)] = rows
        found = position[pc.index_in(query, value_set=unique).to_numpy(zero_copy_only=False)]
        return pa.array(found, type=pa.int64(), mask=found < 0)

    def _rows_at(self, found) -> tuple[np.ndarray, np.ndarray]:
        table = self.index()
        at = found.to_numpy(zero_copy_only=False).astype(np.int64)
        shards = table.column("shard").to_numpy().astype(np.int64)
        rows = table.column("row").to_numpy().astype(np.int64)
        return shards[at], rows[at]

    # ------------------------------------------------------------------ arrays

    def _shard_path(self, entry: dict[str, Any]) -> Path | StoreKey:
        return self.path / entry["name"]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored array, concatenated over shards in order; `example_image`,
        `example_texts` and `word_offsets` rebased to global rows (notebooks, tests)."""
        parts = [self.backend.read(self._shard_path(e)) for e in self.shards]
        if not parts:
            return {}
        out = {}
        for name in parts[0]:
            pieces = [_rebased(name, p, self.shards[:i]) for i, p in enumerate(parts)]
            if name == "word_offsets":
                pieces = [pieces[0]] + [p[1:] for p in pieces[1:]]
            out[name] = np.concatenate(pieces)
        return out

    def load_targets(
        self,
        example_ids: Sequence[str],
        *,
        progress: bool = False,
        needs: Sequence[str] | None = None,
        choose_words: ChooseWords | None = None,
    ) -> Targets:
        """Teacher targets of `example_ids`, rows in that order (see `Targets`).

        One pass over the needed shards in order. Per shard, the needed rows of each array are
        read in one batched, sorted request (whole arrays when most rows are needed; never one
        read per row), then gathered in memory. fp16 features come back as float32. A cache of
        another format version is refused (`check_format_version`). With `choose_words`, of
        the per-word features only those of the words it picks are read (token selection)."""
        check_format_version(self.manifest, self.path)
        ids = list(example_ids)
        shard_of, row_of = self._locate(ids)
        return gather_targets(
            ids,
            shard_of,
            row_of,
            shards=self.shards,
            manifest=self.manifest,
            read_rows=self._read_rows,
            where=self.path,
            progress=progress,
            needs=needs,
            choose_words=choose_words,
            check_ids=not self.index_checked,
        )

    def _read_rows(
        self, entry: dict[str, Any], rows: dict[str, np.ndarray | None]
    ) -> dict[str, np.ndarray]:
        """Verified rows: those of arrays with row digests checked block by block
        (`VerifiedShards.read_rows`), the others' arrays checked whole first (a format
        version 2 cache; strings)."""
        records = entry.get("arrays", {})
        digested = {n: r for n, r in rows.items() if "rows" in records.get(n, {})}
        rest = {n: r for n, r in rows.items() if n not in digested}
        self.verified.check(entry, rest)
        out = self.backend.read_rows(self._shard_path(entry), rest) if rest else {}
        out.update(self.verified.read_rows(entry, digested) if digested else {})
        return out

    # ------------------------------------------------------------------ checks and info

    def check_compatible(self, expected_fingerprint_parts: dict[str, Any]) -> None:
        """Raise `FingerprintMismatchError` if any given part (e.g. `{"dataset": ...}`)
        differs from this cache's fingerprint; parts not given are not compared. Dataset read
        options are compared resolved on both sides (a default spelled out is no difference)."""
        actual = {
            key: _resolved(key, self.fingerprint[key])
            for key in expected_fingerprint_parts
            if key in self.fingerprint
        }
        expected = {key: _resolved(key, part) for key, part in expected_fingerprint_parts.items()}
        differences = diff_fingerprints(expected, actual)
        if differences:
            raise FingerprintMismatchError(
                f"the cache at {self.path} was built for something else (requested != cache):"
                "\n  " + "\n  ".join(differences) + "\nRe-extract for this data (`madcache "
                "extract ... --out NEW_DIR`) or pass a matching --cache.",
                differences,
            )

    def info(self) -> dict[str, Any]:
        """A summary for `madcache cache info` (counts, size, dims, fingerprint, state)."""
        totals = {
            key: sum(int(e.get(key, 0)) for e in self.shards)
            for key in ("examples", "images", "texts", "words")
        }
        return {
            "path": str(self.path),
            "format": self.format,
            "format_version": self.manifest.get("format_version"),
            "state": self.manifest.get("state"),
            "created": self.manifest.get("created"),
            "dataset": self.manifest.get("dataset"),
            "split": self.manifest.get("split"),
            "num_choices": self.manifest.get("num_choices"),
            **totals,
            "shards": len(self.shards),
            "bytes": self._disk_bytes(),
            "dims": self.manifest.get("dims", {}),
            "arrays": _array_summary(self.shards),
            "fingerprint_digest": self.manifest.get("fingerprint_digest")
            or fingerprint_digest(self.manifest),
            "summary": self.manifest.get("summary", {}),
            "unavailable": list(self.manifest.get("unavailable") or []),
            "writers": _writers(self.shards),
            "precision": self.manifest.get("precision"),
        }

    def _disk_bytes(self) -> int:
        files = self.store.size("")
        if self.format == "memory":
            files += sum(self.backend.nbytes(self._shard_path(e)) for e in self.shards)
        return files


def check_format_version(manifest: dict[str, Any], path: Path | StoreKey) -> None:
    """Refuse teacher targets written by another format version: their values mean something
    else (docs/cache-format.md, "Format versions"), so they must not be reused silently."""
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CacheError(
            f"the cache at {path} has format version {version}, but this madcache reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: its stored values were computed differently (docs/cache-format.md,"
            ' "Format versions"). Re-extract it: `madcache extract ... --out NEW_DIR`.'
        )


def _rebased(name: str, arrays: dict[str, np.ndarray], before: list[dict[str, Any]]) -> np.ndarray:
    array = arrays[name]
    if name in ROW_INDEXES:
        return array + sum(int(e[ROW_INDEXES[name]]) for e in before)
    if name == "word_offsets":
        return array + sum(int(e["words"]) for e in before)
    return array


def _resolved(key: str, part: Any) -> Any:
    """A fingerprint part with a dataset's read options resolved (caches from before options
    were resolved at extraction compare equal to the same read spelled another way)."""
    if key != "dataset" or not isinstance(part, dict) or "read_options" not in part:
        return part
    from madcache.data import DATASETS

    if part.get("name") not in DATASETS:
        return part
    try:
        options = resolved_read_options(part["name"], part["read_options"])
    except MadcacheError:  # options this version no longer knows: compare as written
        return part
    return {**part, "read_options": options}


def _writers(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Who wrote the shards: one entry per (rank, world size, host) with its shard count."""
    counts: dict[tuple, int] = {}
    for entry in shards:
        writer = entry.get("writer", {})
        key = (writer.get("rank"), writer.get("world_size"), writer.get("host"))
        counts[key] = counts.get(key, 0) + 1
    return [
        {"rank": r, "world_size": w, "host": h, "shards": n}
        for (r, w, h), n in sorted(counts.items(), key=lambda kv: str(kv[0]))
    ]


def _array_summary(shards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if not shards:
        return {}
    return {
        name: {"dtype": rec["dtype"], "row_shape": rec["shape"][1:]}
        for name, rec in shards[0]["arrays"].items()
    }
