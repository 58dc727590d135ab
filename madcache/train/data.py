"""A stage's training data: examples in chunks, their cached targets as tensors, and the epoch
order (a pure function of (seed, stage, epoch), so a resumed run sees the same batches)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from madcache.cache.targets import Targets, WordTargets
from madcache.data.records import Example
from madcache.data.stored import field_of
from madcache.method.methods import Method
from madcache.method.selection import choose_words, select_words


@dataclass
class BatchTargets:
    """Teacher targets as tensors, rows aligned with a list of examples (None = not needed)."""

    image: torch.Tensor | None = None  # [N, Dv]
    text_eos: torch.Tensor | None = None  # [N, C, Dt]
    word_feat: torch.Tensor | None = None  # [N, C, m, Dt]
    word_span: torch.Tensor | None = None  # [N, C, m, 2]
    word_mask: torch.Tensor | None = None  # [N, C, m]
    logits: torch.Tensor | None = None  # [N, K] teacher logits for CW
    candidates: torch.Tensor | None = None  # [N, K] VQA candidate answer ids

    def rows(self, index: torch.Tensor) -> BatchTargets:
        return BatchTargets(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in dataclasses.fields(self)
            }
        )

    def to(self, device: str) -> BatchTargets:
        return BatchTargets(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
            }
        )


def targets_to_tensors(
    targets: Targets, method: Method, *, m: int, logits: str | None, seed: int
) -> BatchTargets:
    """Keep what `method` needs, as tensors; run word selection (TS) once, here."""
    out = BatchTargets()
    if method.reads("image"):
        out.image = torch.from_numpy(np.asarray(targets.image, dtype=np.float32))
    if method.reads("text_eos"):
        out.text_eos = torch.from_numpy(np.asarray(targets.text_eos, dtype=np.float32))
    if method.reads("words"):
        generator = torch.Generator().manual_seed(seed) if method.selection == "random" else None
        chosen = select_words(
            targets.words,
            num_examples=len(targets.example_ids),
            num_choices=targets.num_choices,
            m=m,
            generator=generator,
        )
        out.word_feat = torch.from_numpy(chosen.feat)
        out.word_span = torch.from_numpy(chosen.span)
        out.word_mask = torch.from_numpy(chosen.mask)
    if method.reads("logits"):
        name = logits or targets.default_logits or sorted(targets.logits)[0]
        out.logits = torch.from_numpy(np.asarray(targets.logits[name], dtype=np.float32))
        if targets.candidates is not None:
            out.candidates = torch.from_numpy(np.asarray(targets.candidates, dtype=np.int64))
    return out


def word_chooser(
    method: Method, *, m: int, seed: int
) -> Callable[[WordTargets], np.ndarray] | None:
    """`Cache.load_targets(..., choose_words=)` for `method`: the flat indices of the words
    token selection keeps (the same words `targets_to_tensors` then selects), so only their
    features are read; None when the method distils no words."""
    if not method.distils_words:
        return None

    def chosen(words: WordTargets) -> np.ndarray:  # the draw `targets_to_tensors` repeats
        random = method.selection == "random"
        picked, mask = choose_words(
            words, m=m, generator=torch.Generator().manual_seed(seed) if random else None
        )
        return picked[mask]

    return chosen


AF_ID = "af:"  # adaptive finetuning's opaque ids: af:<position in the stage's examples>


class LabelFreeViews(Sequence[Example]):
    """Adaptive finetuning's examples, made on access: `shown[i]` (a label-free view under its
    example's id) as `af:<i>` (an SNLI-VE pairID ends in its label's letter). `original_ids`
    maps each `af:<i>` back to `shown`'s id, which only target loading reads: positions, not a
    dict of every id. `shown` may be on disk (`StoredExamples`): nothing here holds the split."""

    def __init__(self, shown: Sequence[Example], ids: Sequence[str]) -> None:
        self.shown = shown
        self.original_ids = OriginalIds(ids)

    def __len__(self) -> int:
        return len(self.shown)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]
        return dataclasses.replace(self.shown[i], id=f"{AF_ID}{i}")

    @property
    def image_ids(self) -> Iterable[str]:
        return field_of(self.shown, "image_id")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class OriginalIds(Mapping[str, str]):
    """`af:<i>` -> `ids[i]`: the cache's id of adaptive finetuning's i-th example."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids

    def __getitem__(self, key: str) -> str:
        position = key[len(AF_ID) :] if key.startswith(AF_ID) else ""
        if not position.isdigit() or int(position) >= len(self.ids):
            raise KeyError(key)
        return self.ids[int(position)]

    def __iter__(self) -> Iterator[str]:
        return (f"{AF_ID}{i}" for i in range(len(self.ids)))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Chunk:
    examples: list[Example]
    targets: BatchTargets | None


@dataclass
class DataSource:
    """A stage's training examples in chunks (one chunk = everything, for low-shot subsets).

    `load(examples)` returns their targets (None when the method needs none). The training
    pipeline (train/stream.py) loads each chunk once per epoch, or once per run when there is
    only one chunk.
    """

    examples: Sequence[Example]  # a list, or a whole split on disk (data/stored.py)
    chunks: Sequence[Sequence[int]]  # positions in `examples`
    load: Callable[[list[Example]], BatchTargets | None]

    def chunk(self, i: int, rows: Sequence[int] | None = None) -> Chunk:
        """Chunk `i` (only its positions `rows`, when given) with its targets, read now."""
        positions = self.chunks[i] if rows is None else [self.chunks[i][r] for r in rows]
        examples = [self.examples[j] for j in positions]
        return Chunk(examples, self.load(examples))

    def steps_per_epoch(self, batch_size: int) -> int:
        return sum(math.ceil(len(c) / batch_size) for c in self.chunks)


def derive_seed(*key: object) -> int:
    """A 64-bit seed that is a pure function of `key` (e.g. seed, stage, epoch)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, key)).encode()).digest()[:8], "little")


def epoch_order(
    source: DataSource, *, seed: int, stage: str, epoch: int, batch_size: int
) -> list[tuple[int, torch.Tensor]]:
    """The (chunk, rows) batches of one epoch: a pure function of (seed, stage, epoch).
    Chunks come in a shuffled order, each chunk's batches together (a chunk is read once)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, stage, epoch))
    order = []
    for ci in torch.randperm(len(source.chunks), generator=generator).tolist():
        rows = torch.randperm(len(source.chunks[ci]), generator=generator)
        order.extend((ci, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size))
    return order
