"""Verified reads (issue 31.1): a process reads a shard's arrays only after checking them against
the sha256s its extraction recorded, once per shard and array, and keeps what it verified. A
lost Zarr chunk (read back as zeros) fails the same check, and is named as lost.

The recorded sha256s are the manifest's shard entries (each a copy of the shard's commit
record), the ones `madcache cache verify` checks: the comparison is `verify.array_problems`, one
implementation for both. A teacher-target cache and a region store are checked alike: both are
opened as a `Cache`, whose every row read (`Cache._read_rows`: `read_rows` below, or `check`
first) and every region read (`RegionStore.load`: `check` first) is verified.

A training run checks the shards it will read before its first step (`ahead`) and records them
in `inputs.json` (`record`: {shard name: digest of the verified arrays' sha256s}).

Since format version 3 the numeric arrays have row digests (`rowtree`): a read hashes only the
row blocks it reads and checks them against the shard's hash tree, whose root is in the
manifest (`read_rows`), keeping the verified blocks so that a run's check ahead and its load
read them once. Strings, a version 2 cache and a region store's reads (`check`) cost one extra
whole read and hash of each needed array of each shard touched, once per process
(docs/guarantees.md, "Verified reads").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from madcache.cache import rowtree
from madcache.cache.gather import gather_targets, ragged_index, target_names
from madcache.cache.manifest import dtype_name
from madcache.cache.verify import array_problems
from madcache.core.errors import CacheCorruptError

# verified row blocks a process keeps to serve again without reading (a low-shot run's check
# ahead and its load); beyond this, blocks are read and checked again when asked for
KEEP_BYTES = 256 * 2**20
# arrays with row digests `ahead` leaves to the read: MAD's task stage reads the features of only
# the words token selection chooses, which are known when its targets load (checked then, as
# read, before any step uses them); checking every word's features ahead cost more than the
# load (2.3x the bytes a VCR low-shot MAD stage uses, at D = 512)
AT_READ = ("word_feat",)


class VerifiedShards:
    """What one opened cache (or region store) has verified so far in this process."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.done: dict[int, dict[str, str]] = {}  # shard index -> {array: sha256}, the record
        self.whole: set[tuple[int, str]] = set()  # (shard, array) hashed whole
        self.kept: dict[tuple[int, str], dict[int, np.ndarray]] = {}  # verified row blocks
        self.kept_bytes = 0

    def check(self, entry: dict[str, Any], names: Iterable[str]) -> None:
        """Before the arrays `names` of the shard `entry` (its manifest entry) are read whole:
        none of its chunks was lost and, the first time each array is asked for, its stored
        values hash to the sha256 the extraction recorded. A mismatch is one
        `CacheCorruptError` line."""
        index = int(entry["index"])
        done = self.done.setdefault(index, {})
        todo = sorted(n for n in set(names) if (index, n) not in self.whole)
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
            problems.append(_unreadable(exc))
        problems += [
            p for name, array in arrays.items() for p in array_problems(name, array, records[name])
        ]
        if problems:
            self._refuse(index, self._lost(entry, todo) or _joined(problems))
        done.update({name: records[name]["sha256"] for name in arrays})
        self.whole.update((index, name) for name in arrays)

    def trusted(self, entry: dict[str, Any], name: str) -> None:
        """Count `name` as verified without reading it: `example_id`, when the index the run
        locates rows with was checked against the manifest's sha256 of each shard's ids."""
        record = entry.get("arrays", {}).get(name)
        if record is not None:
            self.done.setdefault(int(entry["index"]), {})[name] = record["sha256"]

    def read_rows(
        self, entry: dict[str, Any], rows: dict[str, np.ndarray | None]
    ) -> dict[str, np.ndarray]:
        """The rows `rows[name]` (sorted unique; None: all) of arrays with row digests, each row
        block hashed and checked against its tree and the manifest's root before it is
        returned (docs/cache-format.md, "Row digests"). Blocks verified earlier in this process
        are served from memory (up to `KEEP_BYTES`), so a run's check ahead and its load read
        the rows once."""
        index = int(entry["index"])
        records = entry["arrays"]
        plans = {name: _Plan(records[name], wanted) for name, wanted in rows.items()}
        for name, plan in plans.items():
            plan.missing = [b for b in plan.blocks if b not in self.kept.get((index, name), {})]
        request: dict[str, np.ndarray | None] = {}
        proofs: dict[str, list[np.ndarray]] = {}
        for name, plan in plans.items():
            if plan.missing:
                request[name] = plan.block_rows(plan.missing)
                plan.proof = plan.start + rowtree.proof_rows(plan.leaves, plan.missing)
                proofs.setdefault(plan.tree, []).append(plan.proof)
        request.update({tree: np.unique(np.concatenate(p)) for tree, p in proofs.items()})
        path = self.cache.path / entry["name"]
        assumed = self._assume_layouts(path, records, plans)
        got, problems = self._fetch(path, records, plans, request)
        if problems and assumed:  # read again by the shard's own metadata (and say why)
            self.cache.backend.forget_layouts(path)
            got, problems = self._fetch(path, records, plans, request)
        if problems:
            self._refuse(index, self._lost(entry, sorted(request)) or _joined(problems))
        out = {}
        for name, plan in plans.items():
            kept = self.kept.setdefault((index, name), {})
            fresh = plan.split(got[name]) if plan.missing else {}
            if self.kept_bytes < KEEP_BYTES:
                kept.update(fresh)
                self.kept_bytes += sum(block.nbytes for block in fresh.values())
            out[name] = plan.rows_of({**kept, **fresh})
            self.done.setdefault(index, {})[name] = records[name]["sha256"]
        return out

    def _fetch(
        self, path: Any, records: dict[str, Any], plans: dict[str, _Plan], request: dict
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """The requested rows and tree nodes, and what is wrong with them (nothing: every
        block matches its digest and the manifest's root)."""
        try:
            problems = self._shape_problems(path, records, sorted(request))
            got = {} if problems else self.cache.backend.read_rows(path, request)
            return got, problems or [
                p
                for name, plan in sorted(plans.items())
                if plan.missing
                for p in plan.verify(name, got, request[plan.tree])
            ]
        except Exception as exc:  # a damaged shard can fail in any decoder
            return {}, [_unreadable(exc)]

    def _assume_layouts(self, path: Any, records: dict[str, Any], plans: dict[str, _Plan]) -> bool:
        """Row layouts from the manifest (`rows.layout`), so that no array metadata is read."""
        assumed = False
        for name, plan in plans.items():
            hints = records[name]["rows"].get("layout")
            for array, hint in zip((name, plan.tree), hints or ()):
                record = records[array]
                self.cache.backend.assume_layout(
                    path, array, record["shape"], record["dtype"], int(hint)
                )
                assumed = True
        return assumed

    def _shape_problems(
        self, path: Any, records: dict[str, Any], names: Iterable[str]
    ) -> list[str]:
        return [
            f"{name} has shape {list(shape)}, manifest says {records[name]['shape']}"
            for name in names
            for shape in [self.cache.backend.stored_shape(path, name)]
            if shape is not None and list(shape) != list(records[name]["shape"])
        ]

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
        them (it names them).

        The teacher targets of a cache with row digests are checked by reading them as a load
        does (the rows those ids need, block by block; kept for the load, `read_rows`), but
        `word_feat`'s rows when they are read (`AT_READ`); any other array (a region store's,
        a version 2 cache's) is read and hashed whole."""
        wanted = set(names)
        known, shard_of, row_of = self.cache._locate_known(list(ids))
        if not known:
            return
        entries = {int(e["index"]): e for e in self.cache.shards}
        touched = [entries[i] for i in sorted(set(shard_of.tolist()))]
        rows = self._digested(touched[0], wanted)
        later = rows & set(AT_READ)
        rows -= later
        if rows and self.cache.index_checked:
            for entry in touched:
                self.trusted(entry, "example_id")
            rows.add("example_id")
        for entry in touched if rows - {"example_id"} else ():  # shard by shard: the targets
            at = np.flatnonzero(shard_of == int(entry["index"]))  # gathered are dropped at once
            gather_targets(
                [known[i] for i in at],
                shard_of[at],
                row_of[at],
                shards=self.cache.shards,
                manifest=self.cache.manifest,
                read_rows=self.cache._read_rows,
                where=self.cache.path,
                arrays=rows,
                check_ids=not self.cache.index_checked,
            )
        for entry in touched:
            self.check(entry, (wanted - rows - later) & set(entry.get("arrays", {})))

    def _digested(self, entry: dict[str, Any], wanted: set[str]) -> set[str]:
        """Of `wanted`, the teacher-target arrays a load reads that have row digests."""
        records = entry.get("arrays", {})
        return {n for n in wanted & set(target_names(entry)) if "rows" in records.get(n, {})}

    def record(self) -> dict[str, str]:
        """{shard name: sha256 over the verified arrays' names and recorded sha256s}, for the
        run's inputs.json."""
        names = {int(e["index"]): e["name"] for e in self.cache.shards}
        return {
            names[index]: _digest(arrays) for index, arrays in sorted(self.done.items()) if arrays
        }


def _unreadable(exc: Exception) -> str:
    return f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"


def _joined(problems: list[str]) -> str:
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


class _Plan:
    """The row blocks of one array a read needs, and their check against the row tree."""

    def __init__(self, record: dict[str, Any], wanted: np.ndarray | None) -> None:
        info = record["rows"]
        self.record = record
        self.tree, self.block, self.root = info["tree"], int(info["block"]), info["root"]
        self.start = int(info.get("start", 0))  # of this array's tree in the tree array
        self.proof = np.zeros(0, dtype=np.int64)
        self.length = int(record["shape"][0])
        self.leaves = -(-self.length // self.block)
        self.wanted = (
            np.arange(self.length, dtype=np.int64)
            if wanted is None
            else np.asarray(wanted, dtype=np.int64)
        )
        self.blocks = np.unique(self.wanted // self.block).tolist()
        self.missing: list[int] = []

    def block_rows(self, blocks: list[int]) -> np.ndarray:
        starts = np.asarray(blocks, dtype=np.int64) * self.block
        counts = np.minimum(starts + self.block, self.length) - starts
        return ragged_index(starts, counts)

    def split(self, data: np.ndarray) -> dict[int, np.ndarray]:
        """{block: its rows} of the rows of the blocks `missing` (sorted; only an array's last
        block is short, and it comes last)."""
        b = self.block
        return {block: data[i * b : (i + 1) * b] for i, block in enumerate(self.missing)}

    def verify(self, name: str, got: dict[str, np.ndarray], tree_rows: np.ndarray) -> list[str]:
        """Problems of the blocks read (`got[name]`), checked with the tree rows `tree_rows`
        read (`got[self.tree]`: the proofs of every array of this read)."""
        data = got[name]
        shape = [len(self.block_rows(self.missing)), *self.record["shape"][1:]]
        if list(data.shape) != shape or dtype_name(data) != self.record["dtype"]:
            return [
                f"{name} has rows of {dtype_name(data)} {list(data.shape[1:])}, manifest "
                f"says {self.record['dtype']} {self.record['shape'][1:]}"
            ]
        width = rowtree.width_of(self.root)
        hashes = rowtree.leaf_hashes(data, self.block, width)  # blocks follow each other
        nodes = got[self.tree][np.searchsorted(tree_rows, self.proof)]
        proof = [bytes(node) for node in nodes]
        if rowtree.root_of(self.leaves, self.missing, hashes, proof).hex() != self.root:
            return [
                f"{name} checksum mismatch (stored bytes of rows in blocks "
                f"{_span(self.missing)} of {self.block} rows changed)"
            ]
        return []

    def rows_of(self, blocks: dict[int, np.ndarray]) -> np.ndarray:
        data = np.concatenate([blocks[b] for b in self.blocks]) if self.blocks else None
        if data is None:
            return np.zeros((0, *self.record["shape"][1:]), dtype=self.record["dtype"])
        starts = np.cumsum([0] + [len(blocks[b]) for b in self.blocks])
        at = np.searchsorted(np.asarray(self.blocks), self.wanted // self.block)
        return data[starts[at] + self.wanted % self.block]


def _span(blocks: list[int]) -> str:
    return ", ".join(map(str, blocks[:4])) + (" ..." if len(blocks) > 4 else "")


def _digest(arrays: dict[str, str]) -> str:
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(arrays.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
