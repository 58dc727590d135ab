"""A hand-built tiny cache world: per-example truth, the shards written from it, a manifest.

`World.expected(ids)` recomputes targets with plain Python loops from the per-example truth, so
reader tests compare the vectorised gather against an independent reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from madcache.cache.writer import CacheWriter

DV, DT, C = 6, 5, 3


@dataclass
class Ex:
    id: str
    image: str
    texts: list[str]  # the C scored strings
    logits: np.ndarray  # [C] f32 ('iqa')
    similarity: float


@dataclass
class World:
    examples: list[Ex]
    image_feat: dict[str, np.ndarray]  # image id -> [DV] f16
    text_eos: dict[str, np.ndarray]  # text -> [DT] f16
    words: dict[str, dict[str, np.ndarray]]  # text -> word arrays
    shards: list[list[Ex]] = field(default_factory=list)
    centres: list[float] = field(default_factory=lambda: [0.5, 0.1, -0.3])

    def shard_arrays(self, shard: int) -> dict[str, np.ndarray]:
        """One shard's arrays: images once, texts once (examples share text rows)."""
        exs = self.shards[shard]
        images = sorted({e.image for e in exs})
        texts = sorted({t for e in exs for t in e.texts})
        words = [self.words[t] for t in texts]
        counts = [len(w["word_feat"]) for w in words]
        return {
            "image_id": np.array(images, dtype=str),
            "image_feat": np.stack([self.image_feat[i] for i in images]),
            "text_key": np.array(texts, dtype=str),
            "text_eos": np.stack([self.text_eos[t] for t in texts]),
            "text_truncated": np.array([t.endswith("!") for t in texts]),
            "word_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            **{
                name: np.concatenate([w[name] for w in words])
                for name in (
                    "word_feat",
                    "word_span",
                    "word_truncated",
                    "word_vr",
                    "word_yake",
                    "word_score",
                )
            },
            "example_id": np.array([e.id for e in exs], dtype=str),
            "example_image": np.array([images.index(e.image) for e in exs], dtype=np.int64),
            "example_texts": np.array(
                [[texts.index(t) for t in e.texts] for e in exs], dtype=np.int64
            ).reshape(len(exs), C),
            "logits/iqa": np.stack([e.logits for e in exs]).astype(np.float32),
            "similarity": np.array([e.similarity for e in exs], dtype=np.float32),
        }

    def index_columns(self, shard: int) -> dict[str, list]:
        exs = self.shards[shard]
        return {
            "category": [f"cat{int(e.id.split('-')[1]) % 2}" for e in exs],
            "label": [None if i == 0 else i % C for i, _ in enumerate(exs)],
        }

    def expected_words(self, ids: list[str]) -> dict[str, np.ndarray]:
        by_id = {e.id: e for e in self.examples}
        rows = [self.words[t] for i in ids for t in by_id[i].texts]
        counts = [len(r["word_feat"]) for r in rows]
        out = {"offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}
        for name in (
            "word_feat",
            "word_span",
            "word_truncated",
            "word_vr",
            "word_yake",
            "word_score",
        ):
            out[name] = np.concatenate([r[name] for r in rows])
        return out


def make_world(*, n_examples: int = 23, n_shards: int = 3, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    pool = [f"text {k} ünï" + ("!" if k % 5 == 0 else "") for k in range(2 * n_examples)]
    examples = []
    for n in range(n_examples):
        texts = [pool[int(k)] for k in rng.choice(len(pool), C, replace=False)]
        examples.append(
            Ex(
                id=f"ex-{n:03d}",
                image=f"img/{n // 3}.jpg",
                texts=texts,
                logits=rng.normal(size=C).astype(np.float32),
                similarity=float(rng.uniform(-1, 1)),
            )
        )
    words = {}
    for t in pool:
        k = int(rng.integers(0, 5))  # ragged, some texts without words
        words[t] = {
            "word_feat": rng.normal(size=(k, DT)).astype(np.float16),
            "word_span": np.stack([np.arange(k) * 3, np.arange(k) * 3 + 2], 1)
            .astype(np.int32)
            .reshape(k, 2),
            "word_truncated": rng.random(k) < 0.3,
            "word_vr": rng.normal(size=k).astype(np.float32),
            "word_yake": rng.random(k).astype(np.float32),
            "word_score": rng.random(k).astype(np.float32),
        }
    world = World(
        examples=examples,
        image_feat={e.image: rng.normal(size=DV).astype(np.float16) for e in examples},
        text_eos={t: rng.normal(size=DT).astype(np.float16) for t in pool},
        words=words,
    )
    # whole images per shard, like extraction (examples grouped by image)
    by_image: dict[str, list[Ex]] = {}
    for e in examples:
        by_image.setdefault(e.image, []).append(e)
    groups = list(by_image.values())
    world.shards = [[e for g in groups[s::n_shards] for e in g] for s in range(n_shards)]
    return world


def make_manifest(*, checkpoint: str = "ab" * 32, num_choices: int = C) -> dict:
    return {
        "fingerprint": {
            "format_version": 1,
            "teachers": {"vision": {"name": "tiny", "checkpoint_sha256": checkpoint}},
            "dataset": {
                "name": "demo",
                "split": "train",
                "files": {"a.jsonl": "00"},
                "read_options": {},
            },
            "text_rendering": {"renderer": "plain"},
            "selection": {"yake_top": 20},
        },
        "dataset": "demo",
        "split": "train",
        "num_choices": num_choices,
        "dims": {"image": DV, "text": DT},
        "settings": {"default_logits": "iqa"},
        "num_shards": 3,
    }


def write_world(
    path: Path, world: World, *, fmt: str, finish: bool = True, shards: list[int] | None = None
) -> CacheWriter:
    writer = CacheWriter.open(path, manifest=make_manifest(), format=fmt)
    for s in range(len(world.shards)) if shards is None else shards:
        writer.write_shard(s, world.shard_arrays(s), index_columns=world.index_columns(s))
    if finish:
        writer.finish(
            extra={"kmeans_centres": world.centres, "kmeans_scale": 100.0}, summary={"seconds": 1.5}
        )
    return writer


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture(params=["zarr", "hdf5"])
def fmt(request) -> str:
    return request.param


@pytest.fixture
def cache_helpers():
    """The helpers above, for test modules (conftest is not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_world=make_world,
        make_manifest=make_manifest,
        write_world=write_world,
        C=C,
        DV=DV,
        DT=DT,
    )
