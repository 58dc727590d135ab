"""Verified reads (issue 31.1): a process reads a shard's arrays only after checking them against
the sha256s its extraction recorded, once per shard and array, and keeps what it verified. A
lost Zarr chunk (read back as zeros) fails the same check, and is named as lost.

The recorded sha256s are the manifest's shard entries (each a copy of the shard's commit
record), the ones `madcache cache verify` checks: the comparison is `verify.array_problems`, one
implementation for both. A teacher-target cache and a region store are checked alike: both are
opened as a `Cache`, whose every row read (`Cache._read_rows`) and every region read
(`RegionStore.load`) passes `VerifiedShards.check` first.

A training run checks the shards it will read before its first step (`ahead`) and records them
in `inputs.json` (`record`: {shard name: digest of the verified arrays' sha256s}). The cost is one
extra whole read (and hash) of the needed arrays of each shard touched, once per process
(docs/guarantees.md, "Verified reads").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from madcache.cache.verify import array_problems
from madcache.core.errors import CacheCorruptError


class VerifiedShards:
    """What one opened cache (or region store) has verified so far in this process."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.done: dict[int, dict[str, str]] = {}  # shard index -> {array: sha256}

    def check(self, entry: dict[str, Any], names: Iterable[str]) -> None:
        """Before the arrays `names` of the shard `entry` (its manifest entry) are read: none of
        its chunks was lost and, the first time each array is asked for, its stored values hash
        to the sha256 the extraction recorded. A mismatch is one `CacheCorruptError` line."""
        index = int(entry["index"])
        done = self.done.setdefault(index, {})
        todo = sorted(set(names) - set(done))
        if not todo:
            return
        records = entry.get("arrays", {})
        unknown = [name for name in todo if name not in records]
        path = self.cache.path / entry["name"]
        problems = [f"array {name} is not in the manifest" for name in unknown]
        try:
            arrays = self.cache.backend.read(path, [n for n in todo if n in records])
        except Exception as exc:  # a damaged shard can fail in any decoder
            arrays = {}
            problems.append(
                f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
            )
        problems += [
            p for name, array in arrays.items() for p in array_problems(name, array, records[name])
        ]
        if problems:
            self._refuse(
                index,
                self._lost(entry, todo)
                or problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            )
        done.update({name: records[name]["sha256"] for name in arrays})

    def _lost(self, entry: dict[str, Any], names: list[str]) -> str | None:
        """Why a checksum failed when a stored chunk is absent: a lost Zarr chunk reads back as
        zeros (every chunk is written, `write_empty_chunks`, so an absent one was lost)."""
        try:
            lost = self.cache.backend.missing_chunks(self.cache.path / entry["name"], names)
        except Exception:  # the shard is damaged in another way: the checksum says it
            return None
        if not lost:
            return None
        shown = ", ".join(f"{name} ({n})" for name, n in sorted(lost.items()))
        return f"it has lost stored chunks of {shown}, which would read back as zeros"

    def _refuse(self, index: int, problem: str) -> None:
        where = self.cache.path
        raise CacheCorruptError(
            f"{where}: shard {index} does not hold what its extraction "
            f"recorded: {problem}; nothing was trained on it. Run `madcache "
            f"cache verify {where}` and re-extract (or rebuild) it"
        )

    def ahead(self, ids: Iterable[str], names: Iterable[str]) -> None:
        """Check now, shard by shard in order, every shard holding one of the row keys `ids`
        (example ids of a cache, image ids of a region store: what a run will read), for the
        arrays `names` each shard has. Ids the index lacks are left to the read that wants
        them (it names them)."""
        where = self.cache._location_map()
        entries = {int(e["index"]): e for e in self.cache.shards}
        wanted = set(names)
        for index in sorted({where[i][0] for i in ids if i in where}):
            entry = entries[index]
            self.check(entry, wanted & set(entry.get("arrays", {})))

    def record(self) -> dict[str, str]:
        """{shard name: sha256 over the verified arrays' names and recorded sha256s}, for the
        run's inputs.json."""
        names = {int(e["index"]): e["name"] for e in self.cache.shards}
        return {
            names[index]: _digest(arrays) for index, arrays in sorted(self.done.items()) if arrays
        }


def _digest(arrays: dict[str, str]) -> str:
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(arrays.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
