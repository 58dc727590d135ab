"""One adaptive-finetuning epoch over a whole synthetic VCR-like split, streamed from a real cache.

Writes (in a temporary folder) a Zarr teacher-target cache of `--examples` (default 50,000)
VCR-like examples (4 per image, 4 scored texts each, ragged words, `--dim` 512 like CLIP
ViT-B/16) and a region store,
then trains the built-in single-stream student at a small fixed size for one AF epoch (MLM + ITM
+ MD) with `madcache.train.loop.train`, in a fresh process, and prints one JSON line:
- `target_rows_read_per_example`: ids asked of `Cache.load_targets` / examples (goal <= 1.05),
  and `region_images_read_per_image` likewise for the region store;
- `data_wait_share`: the share of the AF stage's wall time the loop waited for a batch (goal
  < 5% with the default settings);
- `peak_rss_mb` of the training process, its growth during training, and the size of one
  chunk's targets (as read, and as kept for the method) and of the whole split's (goal: growth
  bounded by ~2 chunks, not the split).

    python benchmarks/bench_stream.py [--examples 50000] [--chunk-size 4096] [--batch-size 32]
                                      [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

C, REGION_DIM, REGIONS, PER_IMAGE, SHARD = 4, 32, 4, 4, 2048
STUDENT = dict(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_length=40,
    region_dim=REGION_DIM,
    dropout=0.1,
)
WORDS = (
    "person man woman dog car street table holding looking walking red blue old young "
    "because happy angry door window phone cup bag hat shirt"
).split()


def make_examples(n: int):
    """VCR-like Q->A examples, 4 per image, texts of 5-12 words (seeded)."""
    from madcache.data.records import Example, Text

    rng = np.random.default_rng(0)

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS, int(rng.integers(low, high))))

    return [
        Example(
            id=f"q{i}:qa",
            dataset="vcr",
            split="train",
            image_id=f"img{i // PER_IMAGE}",
            image_path=f"img{i // PER_IMAGE}.jpg",
            choices=tuple(Text.from_string(sentence(3, 8)) for _ in range(C)),
            label=int(rng.integers(C)),
            category="activity",
            group=f"q{i}",
            context=Text.from_string(sentence(4, 9) + "?"),
        )
        for i in range(n)
    ]


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(np.float16)


def cache_shard(examples, rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
    images = list(dict.fromkeys(ex.image_id for ex in examples))
    texts = [t for ex in examples for t in ex.texts]
    counts = np.array([len(t.words) for t in texts], dtype=np.int64)
    n_words = int(counts.sum())
    return {
        "image_id": np.array(images),
        "image_feat": normal(rng, len(images), dim),
        "text_key": np.array([f"{ex.id}-{c}" for ex in examples for c in range(C)]),
        "text_eos": normal(rng, len(texts), dim),
        "text_truncated": np.zeros(len(texts), bool),
        "word_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "word_feat": normal(rng, n_words, dim),
        "word_span": np.array([[w.start, w.end] for t in texts for w in t.words], dtype=np.int32),
        "word_truncated": np.zeros(n_words, bool),
        "word_vr": rng.random(n_words, dtype=np.float32),
        "word_yake": rng.random(n_words, dtype=np.float32),
        "word_score": rng.random(n_words, dtype=np.float32),
        "example_id": np.array([ex.id for ex in examples]),
        "example_image": np.array([images.index(ex.image_id) for ex in examples], dtype=np.int64),
        "example_texts": np.arange(len(texts), dtype=np.int64).reshape(len(examples), C),
        "logits/iqa": rng.normal(size=(len(examples), C)).astype(np.float32),
    }


def build(root: Path, n: int, dim: int) -> None:
    """The teacher-target cache and the region store of `n` examples."""
    from madcache.cache.writer import CacheWriter
    from madcache.students.regions import shard_arrays

    rng = np.random.default_rng(1)
    examples = make_examples(n)
    manifest = {
        "fingerprint": {"bench": 1},
        "dataset": "vcr",
        "split": "train",
        "num_choices": C,
        "dims": {"image": dim, "text": dim},
        "settings": {},
        "teachers": {"vision": "bench", "text": "bench"},
    }
    writer = CacheWriter.open(root / "cache", manifest=manifest, format="zarr")
    for shard, start in enumerate(range(0, n, SHARD)):
        writer.write_shard(shard, cache_shard(examples[start : start + SHARD], rng, dim))
    writer.finish()
    images = list(dict.fromkeys(ex.image_id for ex in examples))
    manifest = {
        "kind": "regions",
        "fingerprint": {"bench": 1},
        "dataset": "vcr",
        "split": "train",
        "num_choices": 0,
        "dims": {"region": REGION_DIM},
        "settings": {"extractor": "bench", "max_regions": REGIONS, "splits": ["train"]},
    }
    writer = CacheWriter.open(root / "regions", manifest=manifest, format="zarr")
    per_shard = SHARD // PER_IMAGE
    for shard, start in enumerate(range(0, len(images), per_shard)):
        ids = images[start : start + per_shard]
        regions = [
            (
                rng.normal(size=(REGIONS, REGION_DIM)).astype(np.float32),
                np.tile(np.array([[0.1, 0.1, 0.9, 0.9]], np.float32), (REGIONS, 1)),
            )
            for _ in ids
        ]
        writer.write_shard(
            shard, shard_arrays(ids, regions, REGIONS), index_columns={"image_id": ids}
        )
    writer.finish()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_epoch(root: Path, n: int, chunk_size: int, batch_size: int) -> dict:
    """One AF epoch of the built-in student over the whole split (run in a fresh process)."""
    import torch

    from madcache.cache.reader import open_cache
    from madcache.method.methods import get_method
    from madcache.students import build_student
    from madcache.students.regions import region_loader
    from madcache.train.config import TrainConfig
    from madcache.train.data import DataSource
    from madcache.train.loop import train
    from madcache.train.setup import Setup, make_projections, target_loader

    torch.manual_seed(0)
    torch.set_num_threads(1)
    examples = make_examples(n)
    config = TrainConfig(
        dataset="vcr",
        root=str(root),
        out=str(root / "run"),
        method="md",
        cache=str(root / "cache"),
        regions=str(root / "regions"),
        af_epochs=1,
        epochs=0,
        batch_size=batch_size,
        chunk_size=chunk_size,
        eval_split=None,
        student_options=STUDENT,
        lr=1e-4,
    )
    method = get_method(config.method)
    cache = open_cache(config.cache)
    asked = {"targets": 0, "images": 0}
    load_targets = cache.load_targets

    def counting_load(ids, **kwargs):
        asked["targets"] += len(ids)
        return load_targets(ids, **kwargs)

    cache.load_targets = counting_load
    regions = region_loader(config.regions)
    load_images = regions.store.load

    def counting_images(ids):
        ids = list(ids)
        asked["images"] += len(set(ids))
        return load_images(ids)

    regions.store.load = counting_images
    loader = target_loader(config, method, cache)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).step()  # its lazy imports: not data
    chunks = [list(range(i, min(i + chunk_size, n))) for i in range(0, n, chunk_size)]
    student = build_student("single-stream", **STUDENT)
    setup = Setup(
        config=config,
        method=method,
        student=student,
        projections=make_projections(student, cache, method),
        task_source=DataSource([], [[]], loader),
        af_source=DataSource(examples, chunks, loader),
        regions=regions,
        eval_examples=[],
        provenance={},
        save_student=lambda s, p: None,
    )
    before = rss_mb()
    started = time.perf_counter()
    metrics = train(setup)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reads = dict(asked)
    chunk = examples[:chunk_size]
    kept = loader(chunk)
    kept_mb = sum(getattr(kept, f).nbytes for f in ("image", "text_eos")) / 2**20
    raw = load_targets([ex.id for ex in chunk])
    read_mb = (raw.image.nbytes + raw.text_eos.nbytes + raw.words.feat.nbytes) / 2**20
    af = metrics["training"]["data"]["af"]
    images = len({ex.image_id for ex in examples})
    return {
        "examples": n,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "steps": af["steps"],
        "epoch_s": round(seconds, 1),
        "target_rows_read_per_example": round(reads["targets"] / n, 4),
        "region_images_read_per_image": round(reads["images"] / images, 4),
        "data_wait_share": af["data_wait_share"],
        "rss_before_training_mb": round(before),
        "peak_rss_mb": round(peak),
        "rss_growth_mb": round(peak - before),
        "chunk_read_mb": round(read_mb, 1),
        "chunk_kept_mb": round(kept_mb, 1),
        "split_read_mb": round(read_mb * n / len(chunk), 1),
        "split_kept_mb": round(kept_mb * n / len(chunk), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dim", type=int, default=512, help="teacher feature width")
    parser.add_argument("--train", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        print(
            json.dumps(
                train_epoch(Path(args.train), args.examples, args.chunk_size, args.batch_size)
            )
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build(Path(tmp), args.examples, args.dim)
        built = time.perf_counter() - started
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--train",
                tmp,
                "--examples",
                str(args.examples),
                "--chunk-size",
                str(args.chunk_size),
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            json.dumps(
                {
                    **result,
                    "cache_build_s": round(built, 1),
                    "goals": {
                        "target_rows_read_per_example": "<= 1.05",
                        "data_wait_share": "< 0.05",
                        "rss_growth_mb": "~ 2 x chunk, not the split",
                    },
                }
            )
        )


if __name__ == "__main__":
    main()
