"""The training data pipeline: a stage's batches, read and tokenised ahead of the step.

    epoch_order (train/data.py: a pure function of seed, stage, epoch; batches within chunks)
      -> visits: one chunk of one epoch, with the rows of it this rank needs
      -> loader thread: reads those rows' targets and regions once, tokenises each example once
      -> batch thread: this rank's micro-batches of every global batch, collated (pinned on CUDA)
      -> the training loop, which only moves them to the device

Each example's targets are read once per epoch whatever the chunk size (a lone chunk, i.e. a
low-shot subset, once per run), and at most two chunks are in memory: the one being served and
the next, which the loader thread reads while the step runs on the current one.

Threads, not DataLoader worker processes: the heavy parts (Zarr/HDF5 reads, numpy gathers, the
Rust tokenizer, tensor collation) release the GIL; a thread needs no pickled copy of the student,
the cache or the region store; the batch order stays exact by construction; and a worker process
per chunk would either read every chunk once per worker or break the order. On a machine with
few cores, extra processes would also compete with the step's own threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import IterableDataset

from madcache.data.records import Example
from madcache.students.base import Preparer, RegionInputs, map_tensors
from madcache.train.data import BatchTargets, DataSource, epoch_order

T = TypeVar("T")


@dataclass(frozen=True)
class Layout:
    """How each global batch is split: across `world_size` ranks, then into up to `grad_accum`
    micro-batches on each rank."""

    rank: int = 0
    world_size: int = 1
    grad_accum: int = 1

    def share(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
        """This rank's micro-batches of the global batch `rows`, and whether they are borrowed.

        Rank r takes the r-th of `world_size` contiguous parts and cuts it into up to
        `grad_accum` non-empty micro-batches. A rank whose part is empty (a global batch with
        fewer rows than ranks) borrows the first row with weight 0: it still runs forward and
        backward, so every rank joins the gradient all-reduce, and adds nothing to it."""
        mine = torch.tensor_split(rows, self.world_size)[self.rank]
        if len(mine) == 0:
            return [rows[:1]], True
        return list(torch.tensor_split(mine, min(self.grad_accum, len(mine)))), False


@dataclass
class Visit:
    """One chunk of one epoch: its global batches from the start step on, and the chunk rows
    this rank reads for the whole visit (so a resumed visit reads what an uninterrupted one did)."""

    chunk: int
    batches: list[tuple[int, torch.Tensor]]  # (stage step, chunk rows of the global batch)
    rows: list[int]  # sorted


def visits(
    source: DataSource,
    *,
    seed: int,
    stage: str,
    batch_size: int,
    start: int,
    stop: int,
    layout: Layout,
) -> Iterator[Visit]:
    """The chunk visits of stage steps `start` to `stop` (exclusive), epoch after epoch."""
    per_epoch = source.steps_per_epoch(batch_size)
    if per_epoch == 0:
        return
    epoch = start // per_epoch
    step = epoch * per_epoch
    while step < stop:
        order = epoch_order(source, seed=seed, stage=stage, epoch=epoch, batch_size=batch_size)
        for chunk, group in groupby(order, key=lambda item: item[0]):
            batches = []
            for _, rows in group:
                batches.append((step, rows))
                step += 1
            if batches[-1][0] < start:
                continue
            if batches[0][0] >= stop:
                return
            mine = {
                r for _, rows in batches for piece in layout.share(rows)[0] for r in piece.tolist()
            }
            yield Visit(
                chunk, [(s, rows) for s, rows in batches if start <= s < stop], sorted(mine)
            )
        epoch += 1


@dataclass
class MicroBatch:
    examples: list[Example]
    targets: BatchTargets | None
    inputs: Any  # the student's collated inputs (CPU; pinned on CUDA)
    weight: float  # rows / rows of the global batch (0 for a borrowed row)


@dataclass
class Batch:
    """This rank's part of one optimizer step."""

    step: int
    micro: list[MicroBatch]


@dataclass
class LoadedChunk:
    examples: list[Example]
    targets: BatchTargets | None
    items: list[Any]  # tokenised, one per example
    regions: Callable[[Sequence[Example]], RegionInputs]
    position: dict[int, int]  # chunk row -> index in the lists above

    def micro_batch(self, rows: list[int], preparer: Preparer, weight: float) -> MicroBatch:
        index = [self.position[r] for r in rows]
        examples = [self.examples[i] for i in index]
        targets = None if self.targets is None else self.targets.rows(torch.tensor(index))
        inputs = preparer.collate([self.items[i] for i in index], self.regions(examples))
        return MicroBatch(examples, targets, inputs, weight)


class ChunkLoader:
    """Reads a visit's rows of its chunk (targets, regions) and tokenises them, once. A lone
    chunk (a low-shot subset) is read whole, once per run. `rows_read` counts examples read."""

    def __init__(
        self,
        source: DataSource,
        preparer: Preparer,
        regions: Callable[[Sequence[Example]], RegionInputs],
    ) -> None:
        self.source = source
        self.preparer = preparer
        self.regions = regions
        self.keep = len(source.chunks) == 1
        self.kept: LoadedChunk | None = None
        self.rows_read = 0

    def __call__(self, visit: Visit) -> LoadedChunk:
        if self.kept is not None:
            return self.kept
        rows = list(range(len(self.source.chunks[visit.chunk]))) if self.keep else visit.rows
        chunk = self.source.chunk(visit.chunk, rows)
        self.rows_read += len(rows)
        # a region source with `chunk(examples)` reads the chunk's images at once (RegionLoader)
        regions = (
            self.regions.chunk(chunk.examples) if hasattr(self.regions, "chunk") else self.regions
        )
        loaded = LoadedChunk(
            chunk.examples,
            chunk.targets,
            self.preparer.tokenise(chunk.examples),
            regions,
            {r: i for i, r in enumerate(rows)},
        )
        if self.keep:
            self.kept = loaded
        return loaded


def step_batches(
    loaded: Iterable[tuple[Visit, LoadedChunk]], *, layout: Layout, preparer: Preparer, pin: bool
) -> Iterator[Batch]:
    """This rank's micro-batches of every global batch of the loaded visits."""
    for visit, chunk in loaded:
        for step, rows in visit.batches:
            pieces, borrowed = layout.share(rows)
            micro = [
                chunk.micro_batch(p.tolist(), preparer, 0.0 if borrowed else len(p) / len(rows))
                for p in pieces
            ]
            yield Batch(step, [pinned(m) for m in micro] if pin else micro)


def pinned(micro: MicroBatch) -> MicroBatch:
    """`micro` with its CPU tensors in page-locked memory (asynchronous copies to the GPU)."""

    def pin(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if tensor.device.type == "cpu" else tensor

    return MicroBatch(
        micro.examples,
        map_tensors(micro.targets, pin),
        map_tensors(micro.inputs, pin),
        micro.weight,
    )


class StageStream(IterableDataset):
    """A stage's batches of steps `start` to `stop` (exclusive), for this rank: iterate it once,
    inside `with` (leaving the block stops the threads). `wait_s` is the time the consumer
    waited for data; `rows_read` the examples read."""

    def __init__(
        self,
        source: DataSource,
        *,
        preparer: Preparer,
        regions: Callable[[Sequence[Example]], RegionInputs],
        seed: int,
        stage: str,
        batch_size: int,
        start: int,
        stop: int,
        layout: Layout,
        depth: int,
        pin: bool,
    ) -> None:
        super().__init__()
        self.source = source
        self.preparer = preparer
        self.loader = ChunkLoader(source, preparer, regions)
        self.plan = dict(
            seed=seed, stage=stage, batch_size=batch_size, start=start, stop=stop, layout=layout
        )
        self.layout = layout
        self.depth = depth
        self.pin = pin
        self.threads: list[Prefetcher] = []

    def __iter__(self) -> Iterator[Batch]:
        chunks = Prefetcher(
            ((v, self.loader(v)) for v in visits(self.source, **self.plan)),
            depth=2,
            name="madcache-chunks",
        )
        batches = Prefetcher(
            step_batches(chunks, layout=self.layout, preparer=self.preparer, pin=self.pin),
            depth=self.depth,
            name="madcache-batches",
        )
        self.threads = [batches, chunks]
        return batches

    def __enter__(self) -> Iterator[Batch]:
        return iter(self)

    def __exit__(self, *exc: Any) -> None:
        for thread in self.threads:
            thread.signal_stop()
        for thread in self.threads:
            thread.thread.join(timeout=10)

    @property
    def wait_s(self) -> float:
        return self.threads[0].wait_s if self.threads else 0.0

    @property
    def rows_read(self) -> int:
        return self.loader.rows_read


_END = object()


class Prefetcher(Iterator[T], Generic[T]):
    """Runs `iterable` in a daemon thread, at most `depth` items ahead: the item the consumer
    holds counts as one, so `depth=2` keeps the current item and the next. Exceptions in the
    thread are raised by `__next__`; `wait_s` is the time `__next__` spent waiting."""

    def __init__(self, iterable: Iterable[T], *, depth: int, name: str) -> None:
        self.slots = threading.Semaphore(depth)
        self.queue: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.holding = False
        self.wait_s = 0.0
        self.thread = threading.Thread(target=self._run, args=(iterable,), name=name, daemon=True)
        self.thread.start()

    def _run(self, iterable: Iterable[T]) -> None:
        iterator = iter(iterable)
        while True:
            while not self.slots.acquire(timeout=0.1):
                if self.stop.is_set():
                    return
            if self.stop.is_set():
                return
            try:
                item = next(iterator)
            except StopIteration:
                self.queue.put((_END, None))
                return
            except BaseException as exc:  # handed to the consumer, raised there
                self.queue.put((_END, exc))
                return
            self.queue.put((item, None))

    def __next__(self) -> T:
        if self.holding:
            self.slots.release()
            self.holding = False
        started = time.perf_counter()
        item, error = self.queue.get()
        self.wait_s += time.perf_counter() - started
        if item is _END:
            self.queue.put((item, error))  # stay finished
            if error is not None:
                raise error
            raise StopIteration
        self.holding = True
        return item

    def signal_stop(self) -> None:
        """Ask the thread to stop; a consumer blocked in `__next__` (another thread) sees the
        end."""
        self.stop.set()
        self.queue.put((_END, None))
