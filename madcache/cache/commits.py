"""Per-shard commit records: what is committed is exactly the shards with a record.

A writer stores a shard's arrays and index part, then writes `commits/NNNNN.json` last. The
record holds the shard's manifest entry (counts, array shapes, dtypes, sha256s) and who made it:
rank, world size, host, pid and the precision (device type and compute dtype) of the forward.
Many writers never touch one shared file while extracting, and no step needs a rename, so the
protocol also works on object stores. One writer per shard at a time: `claims/NNNNN` (a
`Store.claim`) is held while a shard is written.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from madcache.cache.manifest import extraction_digest
from madcache.cache.store import Store
from madcache.core.errors import CacheCorruptError, CacheError

COMMITS = "commits"
CLAIMS = "claims"
# what must agree between the shards of one cache (device_name is informational)
PRECISION_KEYS = ("device", "compute_dtype")


def commit_key(shard: int) -> str:
    return f"{COMMITS}/{shard:05d}.json"


def claim_key(shard: int) -> str:
    return f"{CLAIMS}/{shard:05d}"


def read_commits(store: Store) -> dict[int, dict[str, Any]]:
    """Every commit record by shard index. A record that is not JSON is a damaged cache."""
    records = {}
    for key in store.list(COMMITS):
        name = key.rsplit("/", 1)[-1]
        if not (name.endswith(".json") and name[: -len(".json")].isdigit()):
            continue
        try:
            record = json.loads(store.read_bytes(key).decode("utf-8"))
        except FileNotFoundError:
            continue  # deleted by a writer redoing that shard
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CacheCorruptError(
                f"commit record {key} is not valid JSON ({exc}): run `madcache cache verify`"
            ) from None
        records[int(record["index"])] = record
    return records


def write_commit(store: Store, record: Mapping[str, Any]) -> None:
    """Commit one shard (the last write of a shard; the caller holds its claim)."""
    data = json.dumps(record, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    store.write_bytes(commit_key(int(record["index"])), data)


STAMP = "extraction"  # the commit record's key holding `extraction_digest(manifest)`


def foreign_shards(
    records: Mapping[int, Mapping[str, Any]], manifest: Mapping[str, Any]
) -> list[int]:
    """The shards whose commit record (or manifest entry) another extraction wrote: its stamp
    differs from this manifest's `extraction_digest`, or it has none while others have one.
    A cache written before records were stamped (none has one) has no foreign shards."""
    if not any(STAMP in record for record in records.values()):
        return []
    mine = extraction_digest(manifest)
    return sorted(i for i, record in records.items() if record.get(STAMP) != mine)


def foreign_problem(shards: list[int], where: str) -> str:
    shown = ", ".join(map(str, shards[:8])) + (" ..." if len(shards) > 8 else "")
    return (
        f"{where}: shard(s) {shown} were written by another extraction (other teachers, "
        "settings or data) or the manifest was edited since; re-extract them (delete the "
        "shards and their commit records, then rerun the extraction)"
    )


def writer_identity(
    *, rank: int = 0, world_size: int = 1, precision: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Who writes: recorded in every commit record (and so in the manifest's shard list)."""
    return {
        "rank": int(rank),
        "world_size": int(world_size),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "precision": dict(precision or {}),
    }


def precision_of(record: Mapping[str, Any]) -> dict[str, Any]:
    precision = record.get("writer", {}).get("precision") or {}
    return {key: precision.get(key) for key in PRECISION_KEYS}


def check_one_precision(
    records: Mapping[int, Mapping[str, Any]], wanted: Mapping[str, Any] | None, where: str
) -> None:
    """Refuse shards made under different precisions in one cache (e.g. CPU float32 and CUDA
    bfloat16): their values differ in the low bits, so a mix is not one extraction."""
    seen: dict[tuple, list[int]] = {}
    for index, record in sorted(records.items()):
        key = tuple(precision_of(record).items())
        seen.setdefault(key, []).append(index)
    if wanted:
        mine = tuple({key: wanted.get(key) for key in PRECISION_KEYS}.items())
        others = {key: shards for key, shards in seen.items() if key != mine}
        if others:
            key, shards = next(iter(others.items()))
            raise CacheError(
                f"{where} holds shards made under another precision ({_show(key)}, shards "
                f"{_few(shards)}) than this run ({_show(mine)}): one cache never mixes them. "
                "Run on the same kind of device, or use --force / another --out"
            )
    elif len(seen) > 1:
        parts = "; ".join(f"{_show(key)}: shards {_few(shards)}" for key, shards in seen.items())
        raise CacheCorruptError(
            f"{where} mixes shards made under different precisions "
            f"({parts}): re-extract the minority with the same device, "
            "or rebuild with --force"
        )


def _show(key: tuple) -> str:
    values = dict(key)
    return f"{values.get('device')}/{values.get('compute_dtype')}"


def _few(shards: list[int]) -> str:
    return ", ".join(map(str, shards[:5])) + (" ..." if len(shards) > 5 else "")
