"""A whole split's examples on disk, not in memory: what a full-split run and adaptive finetuning
train on (train/setup.py).

A split read into `Example`s costs ~10 KB of Python objects per VCR example (4.4 GB at its
425,846 training examples). `ExampleWriter` writes each example as it streams from the reader
(`encode_example`: one JSON array) into an unnamed temporary file, keeping in memory only the
records' offsets and the ids and image ids (Arrow arrays: ~60 bytes an example). The
`StoredExamples` it returns reads and decodes one record per `[i]` with `pread` (no shared
file position, so the loader thread may read while another thread does; not `mmap`, whose
pages would count in the process's memory), so a run holds only the chunks it is serving.

The file has no name (`tempfile.TemporaryFile`: O_TMPFILE on Linux, else unlinked at once):
however the process ends, nothing is left behind for a rerun or `--resume` to trip on. Its space
is freed when the last process holding it open exits. A process started from this one gets the
open file itself, not a path: a fork inherits it, and pickling `StoredExamples` while a
spawn/forkserver process is started (a `DataLoader` worker, `torch.multiprocessing.spawn`)
passes it as multiprocessing passes a `Connection` (`reduction.DupFd`; pickled at any other
time, it is served once to the process that unpickles it, on this machine, while this process
lives). So such a pickle is not something to save: it names no file.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import reduction
from pathlib import Path
from typing import IO, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from madcache.data.records import Example, decode_example, encode_example

_BATCH = 65_536  # ids gathered as Python strings before they become one Arrow array


class _Strings:
    """A growing column of strings, kept as Arrow arrays of `_BATCH` (not Python objects)."""

    def __init__(self) -> None:
        self.done: list[pa.Array] = []
        self.batch: list[str] = []

    def append(self, value: str) -> None:
        self.batch.append(value)
        if len(self.batch) == _BATCH:
            self.done.append(pa.array(self.batch, pa.string()))
            self.batch = []

    def finish(self) -> pa.Array:
        arrays = [*self.done, pa.array(self.batch, pa.string())]
        return pa.concat_arrays(arrays)


class ExampleWriter:
    """Writes examples one at a time (`add`), then `finish()` gives them as `StoredExamples`.
    `folder`: where the unnamed file lives (a run's folder: a split's records are a few times
    as large as its annotation files, VCR's 3.4x, too large for a memory-backed /tmp)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder)
        self.offsets = array("q", [0])
        self.ids = _Strings()
        self.image_ids = _Strings()

    def add(self, example: Example) -> None:
        record = encode_example(example)
        self.file.write(record)
        self.offsets.append(self.offsets[-1] + len(record))
        self.ids.append(example.id)
        self.image_ids.append(example.image_id)

    def finish(self) -> StoredExamples:
        self.file.flush()
        return StoredExamples(
            _Records(
                self.file,
                np.frombuffer(self.offsets, dtype=np.int64).copy(),
                self.ids.finish(),
                self.image_ids.finish(),
            )
        )


class _Records:
    """The written file and its in-memory index (record i = bytes offsets[i]:offsets[i + 1])."""

    def __init__(self, file: IO[bytes], offsets: np.ndarray, ids: pa.Array, image_ids: pa.Array):
        self.file = file  # kept open (and so on disk) while any sequence refers to it
        self.fd = file.fileno()
        self.offsets = offsets
        self.ids = ids
        self.image_ids = image_ids

    def read(self, record: int) -> Example:
        start, end = int(self.offsets[record]), int(self.offsets[record + 1])
        return decode_example(os.pread(self.fd, end - start, start))

    def __reduce__(self):  # the open file, for a process started from this one (module doc)
        return _reopen, (reduction.DupFd(self.fd), self.offsets, self.ids, self.image_ids)

    def __deepcopy__(self, memo: dict) -> _Records:
        return self  # read-only: copies share the file


def _reopen(fd, offsets: np.ndarray, ids: pa.Array, image_ids: pa.Array) -> _Records:
    """`_Records` in the process that unpickles them, over its own descriptor of the file."""
    return _Records(open(fd.detach(), "rb", buffering=0), offsets, ids, image_ids)


class Column(Sequence[str]):
    """One string field of `StoredExamples`, in the sequence's order, without decoding a
    record."""

    def __init__(self, values: pa.Array, order: np.ndarray) -> None:
        self.values = values
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.values.take(pa.array(self.order[i])).to_pylist()
        return self.values[int(self.order[i])].as_py()

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self.order), _BATCH):
            yield from self[start : start + _BATCH]


class StoredExamples(Sequence[Example]):
    """Examples on disk (`ExampleWriter`) in some order: `[i]` reads and decodes one record;
    `ids` and `image_ids` come from memory. Two sequences may share one file."""

    def __init__(self, records: _Records, order: np.ndarray | None = None) -> None:
        self.records = records
        self.order = np.arange(len(records.offsets) - 1) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.records.read(int(r)) for r in self.order[i]]
        return self.records.read(int(self.order[i]))

    @property
    def ids(self) -> Column:
        return Column(self.records.ids, self.order)

    @property
    def image_ids(self) -> Column:
        return Column(self.records.image_ids, self.order)

    def in_image_order(self) -> StoredExamples:
        """`records.image_order` of these examples (images sorted by id, this order within an
        image: a stable sort; Arrow compares strings as UTF-8 bytes, which order as the
        strings' code points do, as Python's sort does)."""
        keys = self.records.image_ids.take(pa.array(self.order))
        stable = pc.sort_indices(keys).to_numpy()
        return StoredExamples(self.records, self.order[stable])


def field_of(examples: Sequence[Example], name: str) -> Iterable[str]:
    """Each example's `name` ("id" or "image_id"), in order: from memory where the sequence
    keeps the column (`StoredExamples`' `ids` and `image_ids`; `LabelFreeViews`' `image_ids`),
    so no record is decoded; else from the examples."""
    kept = getattr(examples, f"{name}s", None)
    return kept if kept is not None else [getattr(ex, name) for ex in examples]
