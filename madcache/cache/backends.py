"""Shard storage backends: one small interface, three implementations (Zarr v3, HDF5, memory).

A shard is one unit of storage holding named arrays: a Zarr group directory (`shard-00000.zarr`)
or one HDF5 file (`shard-00000.h5`). Names may contain "/" (`logits/iqa`): both formats store
them as nested groups. Arrays are written once, whole, uncompressed (compression gains ~1.08x
on fp16 features, docs/cache-format.md). The reader asks for batches of sorted rows
(`read_rows`), never a row at a time; on a local disk those are read as byte ranges (`RowFile`).

Strings are stored as variable-length UTF-8 (Zarr's `string` data type, HDF5's vlen str) and
always come back as a numpy unicode (`U`) array, so every backend round-trips the same values.
The writer owns atomicity: on a local file system it writes to a temporary path and `rename`s it
into place; in an object store (no rename) the commit record written last is what counts.

A shard is addressed by a `Path` (local) or a `StoreKey` (an object store: only Zarr shards,
through zarr's object-store support). `Shard` names either.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from madcache.cache.store import StoreKey
from madcache.core.errors import CacheError, UnknownNameError

Shard = Path | StoreKey

# Zarr chunk size: small enough that loading a sparse subset touches few bytes, large enough
# that a whole-array read is a few hundred sequential chunk reads (benchmarks/bench_cache_read.py).
MAX_CHUNK_BYTES = 2**20
# `read_rows` reads the whole array when more than this fraction of its rows is wanted.
DENSE_FRACTION = 0.5
# HDF5 row runs separated by at most this many rows are read as one slice.
MAX_GAP_ROWS = 16


def is_string_array(array: np.ndarray) -> bool:
    return array.dtype.kind in "UOT"


def as_unicode(array: np.ndarray) -> np.ndarray:
    """Any array of strings (U, object, StringDType, bytes objects) as a numpy `U` array."""
    if array.dtype.kind == "U":
        return array
    flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]
    return (
        np.array(flat, dtype=str).reshape(array.shape)
        if flat
        else np.zeros(array.shape, dtype="<U1")
    )


class Backend(ABC):
    """Stores a shard's arrays at a path. Subclasses implement five operations."""

    name: str
    suffix: str

    def __init__(self) -> None:
        # (shard, array) -> its RowFile (None: read by the format's library). A finished shard
        # never changes under a reader, and each opened Cache has its own backend.
        self._layouts: dict[tuple[str, str], RowFile | None] = {}

    def shard_path(self, root: Shard, shard: int) -> Shard:
        return root / f"shard-{shard:05d}{self.suffix}"

    def temp_path(self, root: Shard, shard: int) -> Shard:
        return root / f".tmp-shard-{shard:05d}{self.suffix}.{os.getpid()}"

    def shards_present(self, root: Shard) -> dict[int, Shard]:
        """Finished shards under `root` by index (temporary ones excluded)."""
        return _by_index(self._entries(root), self.suffix)

    def temp_paths(self, root: Shard) -> list[Shard]:
        """Half-written shards left by a killed writer."""
        return [p for p in self._entries(root) if p.name.startswith(".tmp-shard-")]

    def _entries(self, root: Shard) -> list[Shard]:
        if isinstance(root, StoreKey):
            return [StoreKey(root.store, key) for key in root.store.list(root.key)]
        return sorted(root.iterdir()) if root.is_dir() else []

    @abstractmethod
    def write(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every array (whole) to a new shard at `path` (which must not exist)."""

    @abstractmethod
    def read(self, path: Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Read the named arrays (default: all) whole; strings come back as `U` arrays."""

    def read_rows(self, path: Path, rows: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """For each name, the rows at sorted unique indices `rows[name]` (None = all rows).

        Never a read per row: whole arrays when most rows are wanted, else the backend's
        batched selection (touched Zarr chunks, coalesced HDF5 slices)."""
        whole = [n for n, r in rows.items() if r is None or _dense(r, self._length(path, n))]
        out = self.read(path, whole) if whole else {}
        for name in whole:
            if rows[name] is not None:
                out[name] = out[name][rows[name]]
        sparse = {n: np.asarray(r, dtype=np.int64) for n, r in rows.items() if n not in out}
        out.update(self._read_selected(path, sparse) if sparse else {})
        return out

    def _length(self, path: Path, name: str) -> int:
        return len(self.read(path, [name])[name])

    def _read_selected(self, path: Path, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: array[rows[name]] for name, array in self.read(path, list(rows)).items()}

    @abstractmethod
    def names(self, path: Path) -> list[str]:
        """The names of every array in the shard, sorted."""

    def layout_hints(self, path: Shard, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        """For the arrays just written to `path`, what locates their rows without reading
        metadata (Zarr: rows per chunk; HDF5: the byte offset of a contiguous dataset); the
        writer keeps it in the manifest. Arrays without one are left out."""
        return {}

    def assume_layout(
        self, path: Shard, name: str, shape: list[int], dtype: str, hint: int
    ) -> None:
        """Read the rows of `name` as `write` stored them (`shape`, `dtype` and the layout
        `hint`, from the manifest) without reading its metadata. Only for arrays whose rows
        are checked by their row digests: bytes read at a wrong place fail that check (the
        reader then reads the shard's metadata)."""
        return None

    def forget_layouts(self, path: Shard) -> None:
        """Drop what is known of a shard's layouts (read them again from its metadata)."""
        for key in [k for k in self._layouts if k[0] == str(path)]:
            del self._layouts[key]

    def stored_shape(self, path: Shard, name: str) -> tuple[int, ...] | None:
        """The shape a stored array's metadata gives, where known without reading it (a layout
        seen before; None otherwise)."""
        layout = self._layouts.get((str(path), name))
        return None if layout is None else tuple(layout.shape)

    def missing_chunks(self, path: Shard, names: Iterable[str]) -> dict[str, int]:
        """{array: chunks absent from storage} for the named arrays (backends without separately
        stored chunks lose none: empty)."""
        return {}

    def exists(self, path: Shard) -> bool:
        if isinstance(path, StoreKey):
            return path.store.exists(path.key)
        return path.exists()

    def remove(self, path: Shard) -> None:
        if isinstance(path, StoreKey):
            path.store.delete_tree(path.key)
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def rename(self, source: Path, target: Path) -> None:
        """Move a finished shard into place (atomic on one POSIX file system; object stores
        have no rename, and their writers store shards in place)."""
        self.remove(target)
        os.replace(source, target)

    def nbytes(self, path: Shard) -> int:
        if isinstance(path, StoreKey):
            return path.store.size(path.key)
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ZarrBackend(Backend):
    """Zarr v3 group per shard; uncompressed, chunked by rows up to `MAX_CHUNK_BYTES`."""

    name = "zarr"
    suffix = ".zarr"

    def write(self, path: Shard, arrays: Mapping[str, np.ndarray]) -> None:
        group = _zarr_group(path, "w-")
        for name, array in arrays.items():
            array = np.asarray(array)
            dtype = str if is_string_array(array) else array.dtype
            stored = group.create_array(
                name,
                shape=array.shape,
                dtype=dtype,
                chunks=_chunks(array),
                compressors=None,
                filters=None,
                config={"write_empty_chunks": True},
            )
            if array.size:
                stored[...] = array

    def read(self, path: Shard, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        group = _zarr_group(path, "r")
        wanted = _zarr_names(group) if names is None else list(names)
        out = {}
        for name in wanted:
            array = group[name][...]
            out[name] = as_unicode(array) if is_string_array(array) else array
        return out

    def read_rows(
        self, path: Shard, rows: Mapping[str, np.ndarray | None]
    ) -> dict[str, np.ndarray]:
        out = {}
        layouts = {name: self._layout(path, name) for name in rows}
        for name, layout in layouts.items():
            if layout is not None:
                out[name] = layout.read(rows[name])
        rest = [name for name in rows if name not in out]
        group = _zarr_group(path, "r") if rest else None
        for name in rest:
            wanted = rows[name]
            stored = group[name]
            if wanted is None or _dense_chunks(wanted, stored.shape[0], stored.chunks[0]):
                array = stored[...] if wanted is None else stored[...][wanted]
            elif len(wanted) == 0:
                array = np.zeros((0, *stored.shape[1:]), dtype=stored.dtype)
            else:  # one call: zarr fetches the touched chunks concurrently
                array = stored.get_orthogonal_selection(
                    (np.asarray(wanted, dtype=np.int64), *[slice(None)] * (stored.ndim - 1))
                )
            out[name] = as_unicode(array) if is_string_array(array) else array
        return out

    def _layout(self, path: Shard, name: str) -> RowFile | None:
        key = (str(path), name)
        if key not in self._layouts:
            self._layouts[key] = _zarr_layout(path, name)
        return self._layouts[key]

    def names(self, path: Shard) -> list[str]:
        return _zarr_names(_zarr_group(path, "r"))

    def stored_shape(self, path: Shard, name: str) -> tuple[int, ...] | None:
        layout = self._layout(path, name)
        return None if layout is None else tuple(layout.shape)

    def layout_hints(self, path: Shard, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        return {
            name: _chunks(a)[0]
            for name, a in arrays.items()
            if a.ndim and a.dtype.name in PLAIN_TYPES and not isinstance(path, StoreKey)
        }

    def assume_layout(
        self, path: Shard, name: str, shape: list[int], dtype: str, hint: int
    ) -> None:
        key = (str(path), name)
        if isinstance(path, StoreKey) or key in self._layouts or dtype not in PLAIN_TYPES:
            return
        self._layouts[key] = RowFile(
            _chunk_files(os.path.join(path, name), "/", len(shape)),
            shape=tuple(shape),
            dtype=np.dtype(dtype).newbyteorder("<"),
            chunk_rows=hint,
        )

    def missing_chunks(self, path: Shard, names: Iterable[str]) -> dict[str, int]:
        """Zarr reads an absent chunk as the fill value (zeros) without a word. Every chunk is
        written (`write_empty_chunks`, even an all-zero one), so an absent one was lost."""
        lost = {}
        group = None
        for name in names:
            layout = self._layout(path, name)
            if layout is not None:
                lost[name] = layout.missing()
                continue
            group = group if group is not None else _zarr_group(path, "r")
            lost[name] = group[name].nchunks - group[name].nchunks_initialized
        return {name: n for name, n in lost.items() if n > 0}


class RowFile:
    """Rows of a fixed-width, uncompressed array stored as raw C-order bytes in files of
    `chunk_rows` rows each (an uncompressed Zarr v3 array chunked by rows, or a contiguous HDF5
    dataset: one file, at `offset`). `read(rows)` reads exactly the bytes of those rows, one
    `preadv` per run of consecutive rows straight into the result: no per-call overhead of the
    format library (~1 ms per Zarr array opened, docs/performance.md "Full-size splits") and no
    whole chunk read for a few of its rows."""

    def __init__(
        self,
        files: Callable[[int], str | Path],
        *,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunk_rows: int,
        offset: int = 0,
    ) -> None:
        self.files = files
        self.shape = shape
        self.dtype = dtype
        self.chunk_rows = max(1, chunk_rows)
        self.offset = offset
        self.row_bytes = dtype.itemsize * math.prod(shape[1:])

    def read(self, rows: np.ndarray | None) -> np.ndarray:
        rows = (
            np.arange(self.shape[0], dtype=np.int64)
            if rows is None
            else np.asarray(rows, dtype=np.int64)
        )
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0 or self.row_bytes == 0:
            return out
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        chunk = rows // self.chunk_rows
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(chunk) != 0)) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(rows)]])
        position = 0
        for index in np.unique(chunk).tolist():
            fd = self._open(index)
            try:
                for a, b in zip(
                    starts[chunk[starts] == index].tolist(), ends[chunk[starts] == index].tolist()
                ):
                    size = (b - a) * self.row_bytes
                    at = self.offset + (int(rows[a]) - index * self.chunk_rows) * self.row_bytes
                    if os.preadv(fd, [buffer[position : position + size]], at) != size:
                        raise CacheError(
                            f"{self.files(index)} is shorter than its array's metadata says"
                        )
                    position += size
            finally:
                os.close(fd)
        return out

    def _open(self, index: int) -> int:
        try:
            return os.open(self.files(index), os.O_RDONLY)
        except FileNotFoundError:
            from madcache.core.errors import CacheCorruptError

            raise CacheCorruptError(
                f"{self.files(index)}: a stored chunk is missing (it would read back as zeros)"
            ) from None

    def missing(self) -> int:
        """Chunk files absent from storage."""
        count = -(-self.shape[0] // self.chunk_rows)
        return sum(not os.path.isfile(self.files(i)) for i in range(count))


class StringFile(RowFile):
    """Rows of a Zarr v3 string array (vlen-utf8 chunks, decoded by numcodecs as zarr does):
    each touched chunk read whole, once, without zarr's per-call overhead."""

    def read(self, rows: np.ndarray | None) -> np.ndarray:
        from numcodecs.vlen import VLenUTF8

        rows = (
            np.arange(self.shape[0], dtype=np.int64)
            if rows is None
            else np.asarray(rows, dtype=np.int64)
        )
        chunk = rows // self.chunk_rows
        out = np.empty(len(rows), dtype=object)
        for index in np.unique(chunk).tolist():
            fd = self._open(index)
            try:
                raw = os.read(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            here = chunk == index
            out[here] = VLenUTF8().decode(raw)[rows[here] - index * self.chunk_rows]
        return as_unicode(out) if len(out) else np.zeros(0, dtype="<U1")


# the data types a Zarr v3 array of plain, uncompressed rows may have (numpy names)
PLAIN_TYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)


def _zarr_layout(path: Shard, name: str) -> RowFile | None:
    """A local Zarr v3 array as `ZarrBackend.write` stores it (plain uncompressed rows of
    numbers, or vlen-utf8 strings), as a `RowFile` / `StringFile`; None for anything else
    (other codecs, object stores), which zarr reads."""
    if isinstance(path, StoreKey):
        return None
    folder = os.path.join(path, name)
    try:
        with open(os.path.join(folder, "zarr.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    codecs = [c.get("name") for c in meta.get("codecs") or []]
    encoding = meta.get("chunk_key_encoding") or {}
    grid = meta.get("chunk_grid") or {}
    shape = tuple(meta.get("shape") or ())
    strings = meta.get("data_type") == "string" and codecs == ["vlen-utf8"] and len(shape) == 1
    plain = (
        meta.get("data_type") in PLAIN_TYPES
        and codecs == ["bytes"]
        and (meta["codecs"][0].get("configuration") or {}).get("endian", "little") == "little"
    )
    if (
        not (strings or plain)
        or len(shape) == 0
        or encoding.get("name") != "default"
        or grid.get("name") != "regular"
        or meta.get("storage_transformers")
    ):
        return None
    chunks = grid["configuration"]["chunk_shape"]
    if list(chunks[1:]) != [max(1, s) for s in shape[1:]] or any(s == 0 for s in shape[1:]):
        return None
    separator = (encoding.get("configuration") or {}).get("separator", "/")
    chunk_file = _chunk_files(folder, separator, len(shape))
    if strings:
        return StringFile(
            chunk_file, shape=shape, dtype=np.dtype(object), chunk_rows=int(chunks[0])
        )
    return RowFile(
        chunk_file,
        shape=shape,
        dtype=np.dtype(meta["data_type"]).newbyteorder("<"),
        chunk_rows=int(chunks[0]),
    )


def _chunk_files(folder: str, separator: str, ndim: int) -> Callable[[int], str]:
    """The file of each row chunk of a Zarr v3 array chunked by rows only."""
    trailing = [0] * (ndim - 1)

    def chunk_file(index: int) -> str:
        return os.path.join(folder, separator.join(map(str, ["c", index, *trailing])))

    return chunk_file


def _zarr_names(group) -> list[str]:
    import zarr

    return sorted(
        name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)
    )


def _zarr_group(path: Shard, mode: str):
    import zarr

    if isinstance(path, StoreKey):
        return zarr.open_group(store=path.store.zarr_store(), path=path.key, mode=mode)
    return zarr.open_group(str(path), mode=mode)


def _local(path: Shard, backend: str) -> Path:
    """The file of a backend that needs a local file system (HDF5, memory)."""
    if isinstance(path, StoreKey):
        raise CacheError(
            f"{path}: {backend} shards need a local path; caches in an object "
            "store are stored as zarr (--format zarr)"
        )
    return path


def _dense(rows: np.ndarray, length: int) -> bool:
    return len(rows) > DENSE_FRACTION * max(1, length)


def _dense_chunks(rows: np.ndarray, length: int, chunk_rows: int) -> bool:
    """Zarr reads whole chunks: go whole-array when most chunks would be touched anyway."""
    touched = len(np.unique(np.asarray(rows) // chunk_rows)) if len(rows) else 0
    return touched > DENSE_FRACTION * max(1, -(-length // chunk_rows))


def _chunks(array: np.ndarray) -> tuple[int, ...]:
    if array.ndim == 0:
        return ()
    row_bytes = max(1, array[:1].nbytes if len(array) else array.itemsize)
    rows = max(1, min(len(array), MAX_CHUNK_BYTES // row_bytes))
    return (rows, *(max(1, s) for s in array.shape[1:]))


class Hdf5Backend(Backend):
    """One HDF5 file per shard; contiguous (unchunked) datasets, vlen UTF-8 strings."""

    name = "hdf5"
    suffix = ".h5"

    def write(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        import h5py

        with h5py.File(_local(path, self.name), "w-") as handle:
            for name, array in arrays.items():
                array = np.asarray(array)
                if is_string_array(array):
                    handle.create_dataset(
                        name,
                        data=as_unicode(array).astype(object),
                        dtype=h5py.string_dtype("utf-8"),
                    )
                else:
                    handle.create_dataset(name, data=array)

    def read(self, path: Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        import h5py

        with h5py.File(_local(path, self.name), "r") as handle:
            wanted = _h5_names(handle) if names is None else list(names)
            return {name: _h5_read(handle[name]) for name in wanted}

    def read_rows(self, path: Path, rows: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        known = {n: self._layouts.get((str(path), n)) for n in rows}
        if all(known.values()):  # every array's layout seen before: no need to open it
            return {name: layout.read(rows[name]) for name, layout in known.items()}
        import h5py

        with h5py.File(_local(path, self.name), "r") as handle:
            out = {}
            for name, wanted in rows.items():
                key = (str(path), name)
                if key not in self._layouts:
                    self._layouts[key] = _h5_layout(path, h5py.h5d.open(handle.id, name.encode()))
                if self._layouts[key] is not None:
                    out[name] = self._layouts[key].read(wanted)
                    continue
                dataset = handle[name]
                strings = h5py.check_string_dtype(dataset.dtype) is not None
                if wanted is None or _dense(wanted, dataset.shape[0]):
                    array = _h5_read(dataset)
                    out[name] = array if wanted is None else array[wanted]
                elif strings and len(wanted):  # the ids: one point selection, ~10x a slice's
                    out[name] = as_unicode(dataset.asstr()[np.asarray(wanted, dtype=np.int64)])
                else:
                    out[name] = _h5_runs(dataset, np.asarray(wanted, dtype=np.int64))
                    out[name] = as_unicode(out[name]) if strings else out[name]
            return out

    def names(self, path: Path) -> list[str]:
        import h5py

        with h5py.File(_local(path, self.name), "r") as handle:
            return _h5_names(handle)

    def layout_hints(self, path: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        import h5py

        with h5py.File(_local(path, self.name), "r") as handle:
            layouts = {n: _h5_layout(path, h5py.h5d.open(handle.id, n.encode())) for n in arrays}
        return {name: layout.offset for name, layout in layouts.items() if layout is not None}

    def assume_layout(self, path: Path, name: str, shape: list[int], dtype: str, hint: int) -> None:
        key = (str(path), name)
        if key in self._layouts or dtype not in PLAIN_TYPES:
            return
        self._layouts[key] = RowFile(
            lambda _: Path(path),
            shape=tuple(shape),
            dtype=np.dtype(dtype).newbyteorder("<"),
            chunk_rows=max(1, shape[0]),
            offset=hint,
        )


def _h5_layout(path: Path, dataset) -> RowFile | None:
    """A contiguous HDF5 dataset of numbers (what `Hdf5Backend.write` stores; contiguous means
    unfiltered) as a `RowFile` over the shard file; None for anything else, which h5py reads.
    `dataset` is a low-level `DatasetID` (its properties cost far less than `Dataset`'s)."""
    import h5py

    offset = dataset.get_offset()
    dtype, shape = dataset.dtype, dataset.shape
    if (
        offset is None
        or len(shape) == 0
        or dtype.kind not in "biuf"
        or dataset.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS
        or dtype.byteorder == ">"
        or (dtype.byteorder == "=" and not np.little_endian)
    ):
        return None
    return RowFile(
        lambda _: Path(path), shape=shape, dtype=dtype, chunk_rows=max(1, shape[0]), offset=offset
    )


def _h5_runs(dataset, rows: np.ndarray) -> np.ndarray:
    """Rows read as a few contiguous slices (runs joined across gaps of <= MAX_GAP_ROWS)."""
    if len(rows) == 0:
        return np.zeros((0, *dataset.shape[1:]), dtype=dataset.dtype)
    breaks = np.flatnonzero(np.diff(rows) > MAX_GAP_ROWS + 1) + 1
    starts = rows[np.concatenate([[0], breaks])]
    ends = rows[np.concatenate([breaks - 1, [len(rows) - 1]])] + 1
    blocks = np.concatenate([dataset[int(a) : int(b)] for a, b in zip(starts, ends)])
    block_start = np.concatenate([[0], np.cumsum(ends - starts)[:-1]])
    run = np.searchsorted(starts, rows, side="right") - 1
    return blocks[rows - starts[run] + block_start[run]]


def _h5_names(handle) -> list[str]:
    import h5py

    found: list[str] = []
    handle.visititems(
        lambda name, node: found.append(name) if isinstance(node, h5py.Dataset) else None
    )
    return sorted(found)


def _h5_read(dataset) -> np.ndarray:
    import h5py

    if h5py.check_string_dtype(dataset.dtype) is not None:
        return as_unicode(dataset.asstr()[...])
    return dataset[...]


class MemoryBackend(Backend):
    """Shards held in a process-wide dict keyed by path (tests, notebooks); nothing on disk."""

    name = "memory"
    suffix = ".mem"
    _store: dict[str, dict[str, np.ndarray]] = {}
    _lock = threading.Lock()

    def write(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        with self._lock:
            if str(path) in self._store:
                raise FileExistsError(path)
            self._store[str(path)] = {
                name: as_unicode(np.asarray(a))
                if is_string_array(np.asarray(a))
                else np.array(a, copy=True)
                for name, a in arrays.items()
            }

    def read(self, path: Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        shard = self._store[str(path)]
        wanted = sorted(shard) if names is None else list(names)
        return {name: shard[name].copy() for name in wanted}

    def names(self, path: Path) -> list[str]:
        return sorted(self._store[str(path)])

    def exists(self, path: Path) -> bool:
        return str(path) in self._store

    def remove(self, path: Path) -> None:
        with self._lock:
            self._store.pop(str(path), None)

    def rename(self, source: Path, target: Path) -> None:
        with self._lock:
            self._store[str(target)] = self._store.pop(str(source))

    def nbytes(self, path: Path) -> int:
        return sum(a.nbytes for a in self._store.get(str(path), {}).values())

    def _entries(self, root: Path) -> list[Path]:
        prefix = str(root) + os.sep
        return sorted(
            Path(key)
            for key in self._store
            if key.startswith(prefix) and os.sep not in key[len(prefix) :]
        )


def _by_index(paths: Iterable[Path], suffix: str) -> dict[int, Path]:
    found = {}
    for path in paths:
        stem = path.name[len("shard-") : -len(suffix)] if path.name.endswith(suffix) else ""
        if path.name.startswith("shard-") and stem.isdigit():
            found[int(stem)] = path
    return found


BACKENDS: dict[str, type[Backend]] = {
    "zarr": ZarrBackend,
    "hdf5": Hdf5Backend,
    "memory": MemoryBackend,
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UnknownNameError(
            f"cache format '{name}' not found. Available: {', '.join(sorted(BACKENDS))}"
        )
    return BACKENDS[name]()
