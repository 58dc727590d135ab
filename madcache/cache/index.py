"""`index.parquet`: example id -> (shard, row), image id, and per-example columns.

The writer stores one small part per shard (`index-parts/00000.parquet`) with the shard, so a
resumed extraction still knows the columns of shards written by an earlier run; `finish` joins
the parts, in shard order, into `index.parquet`. Both go through the cache's `Store`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache.location import as_store
from madcache.cache.manifest import INDEX, INDEX_PARTS
from madcache.cache.store import Store
from madcache.core.errors import CacheCorruptError

RESERVED = ("example_id", "shard", "row", "image_id")


def part_key(shard: int) -> str:
    return f"{INDEX_PARTS}/{shard:05d}.parquet"


def write_part(
    root: Path | Store,
    shard: int,
    arrays: Mapping[str, np.ndarray],
    columns: Mapping[str, list[Any]] | None,
) -> None:
    """The index rows of one shard, written whole (`Store.write_bytes`)."""
    import pyarrow as pa

    ids = arrays["example_id"].tolist()
    data: dict[str, Any] = {
        "example_id": pa.array(ids, pa.string()),
        "shard": pa.array(np.full(len(ids), shard, np.int32)),
        "row": pa.array(np.arange(len(ids), dtype=np.int64)),
    }
    data["image_id"] = pa.array(_image_ids(arrays, columns, len(ids)), pa.string())
    for name, values in (columns or {}).items():
        if name in RESERVED:
            continue
        if len(values) != len(ids):
            raise ValueError(
                f"index column {name!r} has {len(values)} values for {len(ids)} examples"
            )
        data[name] = pa.array(list(values))
    as_store(root).write_bytes(part_key(shard), table_bytes(pa.table(data)))


def table_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_table(store: Store, key: str, columns: list[str] | None = None):
    """A parquet object of the store as a pyarrow Table (`FileNotFoundError` if absent)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(store.read_bytes(key)), columns=columns)


def _image_ids(
    arrays: Mapping[str, np.ndarray], columns: Mapping[str, list[Any]] | None, n: int
) -> list[str | None]:
    """From the shard (`image_id[example_image]`), else the writer's column, else nulls."""
    if "image_id" in arrays and "example_image" in arrays:
        return arrays["image_id"][arrays["example_image"]].tolist()
    if columns and "image_id" in columns:
        return [None if v is None else str(v) for v in columns["image_id"]]
    return [None] * n


def read_parts(root: Path | Store, shards: Iterable[int]):
    """The index of the given shards, in shard order, as one pyarrow Table."""
    import pyarrow as pa

    store = as_store(root)
    tables = [_read_part(store, s) for s in sorted(shards)]
    if not tables:
        return pa.table(
            {
                "example_id": pa.array([], pa.string()),
                "shard": pa.array([], pa.int32()),
                "row": pa.array([], pa.int64()),
                "image_id": pa.array([], pa.string()),
            }
        )
    return pa.concat_tables(tables, promote_options="default")


def _read_part(store: Store, shard: int):
    try:
        return read_table(store, part_key(shard))
    except FileNotFoundError:
        raise CacheCorruptError(
            f"the index part of shard {shard} ({part_key(shard)}) is "
            "missing: rerun the extraction to redo that shard"
        ) from None


def build_index(root: Path | Store, shards: Iterable[int]) -> None:
    """Join the parts into `index.parquet`; duplicate example ids -> `CacheCorruptError`."""
    store = as_store(root)
    table = read_parts(store, shards)
    check_unique(table.column("example_id").to_pylist())
    store.write_bytes(INDEX, table_bytes(table))


def check_unique(ids: list[str]) -> None:
    if len(set(ids)) == len(ids):
        return
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    raise CacheCorruptError(
        f"{len(dupes)} example ids occur more than once across shards "
        f"(e.g. {', '.join(map(repr, dupes[:5]))}): each example must be "
        "written to exactly one shard"
    )


def read_index(root: Path | Store, columns: list[str] | None = None):
    return read_table(as_store(root), INDEX, columns)
