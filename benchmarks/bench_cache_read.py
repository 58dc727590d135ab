"""Loading a low-shot subset's targets: `Cache.load_targets` vs a naive row-by-row read.

Writes one synthetic VCR-like cache per format (examples grouped by image, 4 scored texts per
example, ragged words), then loads a random 3% of the example ids both ways and prints rows/s
side by side. Ratios, not absolute numbers, are the result (shared 2-core machines).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from madcache.cache.reader import open_cache  # noqa: E402
from madcache.cache.writer import CacheWriter  # noqa: E402

SHARDS, PER_SHARD, C, DV, DT, WORDS = 4, 1500, 4, 512, 512, 16
FRACTION = 0.03


def shard_arrays(shard: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n_img, n_txt = PER_SHARD // 3 + 1, PER_SHARD * C
    counts = rng.integers(WORDS // 2, WORDS * 3 // 2, n_txt)
    n_words = int(counts.sum())
    return {
        "image_id": np.array([f"img{shard}-{i}" for i in range(n_img)]),
        "image_feat": rng.normal(size=(n_img, DV)).astype(np.float16),
        "text_eos": rng.normal(size=(n_txt, DT)).astype(np.float16),
        "word_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "word_feat": rng.normal(size=(n_words, DT)).astype(np.float16),
        "word_span": rng.integers(0, 80, (n_words, 2)).astype(np.int32),
        "word_truncated": np.zeros(n_words, bool),
        "word_vr": rng.random(n_words, dtype=np.float32),
        "word_yake": rng.random(n_words, dtype=np.float32),
        "word_score": rng.random(n_words, dtype=np.float32),
        "example_id": np.array([f"ex{shard}-{i}" for i in range(PER_SHARD)]),
        "example_image": np.arange(PER_SHARD, dtype=np.int64) // 3,
        "example_texts": np.arange(n_txt, dtype=np.int64).reshape(PER_SHARD, C),
        "logits/iqa": rng.normal(size=(PER_SHARD, C)).astype(np.float32),
    }


def build(root: Path, fmt: str) -> float:
    rng = np.random.default_rng(0)
    manifest = {
        "fingerprint": {"bench": 1},
        "dataset": "bench",
        "split": "train",
        "num_choices": C,
        "dims": {"image": DV, "text": DT},
        "settings": {},
    }
    started = time.perf_counter()
    writer = CacheWriter.open(root, manifest=manifest, format=fmt)
    for shard in range(SHARDS):
        writer.write_shard(shard, shard_arrays(shard, rng))
    writer.finish()
    return time.perf_counter() - started


class NaiveReader:
    """What a per-example Dataset.__getitem__ would do: open arrays once, read row by row."""

    def __init__(self, root: Path, fmt: str) -> None:
        self.fmt = fmt
        self.cache = open_cache(root)
        self.handles = [self._open(root / e["name"]) for e in self.cache.shards]
        self.where = self.cache._location_map()

    def _open(self, path: Path):
        if self.fmt == "zarr":
            import zarr

            return zarr.open_group(str(path), mode="r")
        import h5py

        return h5py.File(path, "r")

    def row(self, example_id: str) -> dict[str, np.ndarray]:
        shard, row = self.where[example_id]
        g = self.handles[shard]
        texts = g["example_texts"][row]
        out = {
            "image": g["image_feat"][int(g["example_image"][row])].astype(np.float32),
            "text_eos": np.stack([g["text_eos"][int(t)] for t in texts]).astype(np.float32),
            "iqa": g["logits/iqa"][row],
        }
        words = []
        for t in texts:
            start, end = g["word_offsets"][int(t) : int(t) + 2]
            words.append(g["word_feat"][int(start) : int(end)].astype(np.float32))
        out["words"] = words
        return out


def whole_shard_seconds(root: Path, subset: list[str]) -> float:
    """The same load, forced to read every needed array whole (the simpler design)."""
    from madcache.cache import backends

    saved = backends.DENSE_FRACTION
    backends.DENSE_FRACTION = 0.0
    try:
        started = time.perf_counter()
        open_cache(root).load_targets(subset)
        return time.perf_counter() - started
    finally:
        backends.DENSE_FRACTION = saved


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>9,.0f} rows/s"


def main() -> None:
    rng = np.random.default_rng(1)
    ids = [f"ex{s}-{i}" for s in range(SHARDS) for i in range(PER_SHARD)]
    subset = [ids[i] for i in rng.choice(len(ids), int(len(ids) * FRACTION), replace=False)]
    print(
        f"{SHARDS} shards x {PER_SHARD} examples, C={C}, D={DT}, ~{WORDS} words/text; "
        f"subset {len(subset)} ids ({FRACTION:.0%}), random"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("zarr", "hdf5"):
            root = Path(tmp) / fmt
            write_s = build(root, fmt)
            started = time.perf_counter()
            targets = open_cache(root).load_targets(subset)
            fast = time.perf_counter() - started
            whole = whole_shard_seconds(root, subset)
            naive = NaiveReader(root, fmt)
            started = time.perf_counter()
            rows = [naive.row(eid) for eid in subset]
            slow = time.perf_counter() - started
            np.testing.assert_array_equal(targets.image[5], rows[5]["image"])
            np.testing.assert_array_equal(
                targets.words.feat[targets.words.text_slice(5 * C)], rows[5]["words"][0]
            )
            size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
            print(
                f"{fmt:5s} write {SHARDS * PER_SHARD / write_s:>8,.0f} ex/s ({size:.0f} MiB) | "
                f"load_targets {rate(len(subset), fast)} | whole shards "
                f"{rate(len(subset), whole)} | row-by-row {rate(len(subset), slow)} | "
                f"load_targets / row-by-row {slow / fast:.1f}x"
            )


if __name__ == "__main__":
    main()
