"""Torch Datasets over a cache split and its dataset records, for notebooks and other trainers.

`CacheDataset` (map-style) and `CacheStream` (iterable) yield `CacheItem`s, an example with its
teacher targets as tensors (what `madcache train` feeds its losses: `BatchTargets`, token
selection done), and work with a plain `DataLoader` (`collate_fn=madcache.collate`), its worker
processes and a `DistributedSampler`.

They live in the training layer, not beside the readers or the cache: `madcache.data` comes
before the cache in the data flow and may not import it, and the cache layer may not import
token selection (`madcache.method`), which turns cached words into the selected words' targets.
Here both are at hand, and the targets are made by the trainer's own `targets_to_tensors`, so a
notebook's batches hold what a training run's do (docs/notebook.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from madcache.cache.reader import Cache, open_cache
from madcache.core.errors import ConfigValueError
from madcache.data.records import Example, image_order
from madcache.data.stored import ExampleWriter, StoredExamples
from madcache.method.methods import Method, get_method
from madcache.train.data import BatchTargets, targets_to_tensors, word_chooser


@dataclass
class CacheItem:
    """One example and its targets (each tensor with a leading dimension of 1)."""

    example: Example
    targets: BatchTargets


@dataclass
class CacheBatch:
    """Collated items: the examples and their targets, rows aligned (`BatchTargets` fields:
    image [B, Dv], text_eos [B, C, Dt], word_feat [B, C, m, Dt], ...; None when not needed)."""

    examples: list[Example]
    targets: BatchTargets

    def __getattr__(self, name: str) -> Any:  # batch.image == batch.targets.image
        if name in {f.name for f in fields(BatchTargets)}:
            return getattr(self.targets, name)
        raise AttributeError(name)


def collate(items: Sequence[CacheItem]) -> CacheBatch:
    """`DataLoader(collate_fn=collate)`: the items' targets concatenated row by row."""
    tensors = {}
    for field in fields(BatchTargets):
        parts = [getattr(item.targets, field.name) for item in items]
        tensors[field.name] = None if parts[0] is None else torch.cat(parts)
    return CacheBatch([item.example for item in items], BatchTargets(**tensors))


def _stored_split(
    dataset: str, root: str | Path, split: str, options: dict[str, Any], workdir: str | Path | None
) -> StoredExamples:
    """The split as it streams from the reader, written to disk (data/stored.py)."""
    from madcache.data import iter_examples

    if workdir is not None and not Path(workdir).is_dir():
        raise ConfigValueError(
            "workdir",
            f"{workdir} is not a folder: give one with room for the split's records (a few "
            "times the size of its annotation files), or leave workdir out (the system's temp dir)",
        )
    writer = ExampleWriter(workdir)
    for example in iter_examples(dataset, root, split, **options):
        writer.add(example)
    return writer.finish()


class _Split:
    """What both Datasets share: the split's examples in the cache's order, and the loading of
    their targets. The cache is opened lazily in each process (worker processes included); a
    split read from `dataset`/`root` is kept on disk (`CacheDataset`'s doc)."""

    def __init__(
        self,
        cache: str | Path | Cache,
        *,
        dataset: str | None = None,
        root: str | Path | None = None,
        split: str = "train",
        examples: Sequence[Example] | None = None,
        method: str | Method = "md",
        m: int = 2,
        seed: int = 0,
        teacher_logits: str | None = None,
        read_options: dict[str, Any] | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.path = str(cache.path) if isinstance(cache, Cache) else cache  # a dir or a URL
        self._cache = cache if isinstance(cache, Cache) else None
        if examples is None:
            if dataset is None or root is None:
                raise TypeError(
                    "give dataset= and root= (the split's original files), or examples="
                )
            examples = _stored_split(dataset, root, split, read_options or {}, workdir)
        # the cache's order: chunks = shards
        if isinstance(examples, StoredExamples):
            self.examples: Sequence[Example] = examples.in_image_order()
        else:
            self.examples = image_order(list(examples))
        self.method = get_method(method) if isinstance(method, str) else method
        self.m, self.seed, self.teacher_logits = m, seed, teacher_logits

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            self._cache = open_cache(self.path)
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}  # each worker opens its own

    def load(self, examples: Sequence[Example]) -> list[CacheItem]:
        """The items of `examples`, their targets read in one `load_targets` call."""
        ids = [ex.id for ex in examples]
        targets = self.cache.load_targets(
            ids,
            needs=self.method.needs,
            choose_words=word_chooser(self.method, m=self.m, seed=self.seed),
        )
        tensors = targets_to_tensors(
            targets, self.method, m=self.m, logits=self.teacher_logits, seed=self.seed
        )
        return [CacheItem(ex, tensors.rows(torch.tensor([i]))) for i, ex in enumerate(examples)]


class CacheDataset(_Split, Dataset):
    """Map-style: `dataset[i]` is the i-th example of the split (in the cache's order) with its
    targets. A `DataLoader` with a batch size fetches a batch's indices at once
    (`__getitems__`): one batched read of just those rows, so any sampler (shuffling,
    `DistributedSampler`) reads each example once per epoch.

    `cache` is a path or an opened `Cache`; the examples come from `dataset`/`root`/`split`
    (read with `read_options`), or are given as `examples` (a list, or `StoredExamples`).
    `method` ("md", "mad", ... or a `Method`) decides which targets are read (its `needs`);
    `m`, `seed`, `teacher_logits` are the training settings of the same names (token
    selection, confidence weighting).

    A split read from `dataset`/`root` is not held as `Example`s: it streams from the reader
    into an unnamed temporary file in `workdir` (data/stored.py; default: the system's temp
    dir, `TMPDIR`), one record an example, a few times the size of the split's annotation
    files (real VCR: ~3.1 KB a record, 3.4x: ~1.3 GB for its 425,846 training examples);
    memory keeps the records' offsets, ids and image ids (~50 bytes an example), and an
    example is decoded when it is asked for. DataLoader workers, forked or spawned, read the
    same file. It has no name: nothing is left behind however the process ends (a SIGKILLed
    notebook included), and its space is freed when the last process holding it (the notebook, a
    worker) exits."""

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> CacheItem:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[CacheItem]:
        return self.load([self.examples[i] for i in indices])


class CacheStream(_Split, IterableDataset):
    """Iterable: the split in the cache's order, `chunk_size` examples read at once, each chunk
    once, one chunk in memory at a time. The chunks are dealt round-robin to the DataLoader's
    workers and, under `torch.distributed` (or with `rank` / `world_size` given), to the ranks:
    each example is yielded by exactly one worker of one rank. Arguments as `CacheDataset`'s."""

    def __init__(
        self,
        cache: str | Path | Cache,
        *,
        chunk_size: int = 4096,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(cache, **options)
        self.chunk_size = chunk_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.examples)

    def chunks(self) -> Iterator[Sequence[Example]]:
        """This worker's chunks of the split, each read from disk when it is reached."""
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world = torch.distributed.get_world_size() if distributed else 1
        worker = get_worker_info()
        part, parts = rank, world
        if worker is not None:
            part, parts = rank * worker.num_workers + worker.id, world * worker.num_workers
        size = self.chunk_size
        for i in range(part, math.ceil(len(self.examples) / size), parts):
            yield self.examples[i * size : (i + 1) * size]

    def __iter__(self) -> Iterator[CacheItem]:
        for chunk in self.chunks():
            yield from self.load(chunk)
