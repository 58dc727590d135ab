"""Extraction throughput vs the bare teacher forward, side by side on the same inputs.

- `forward`: the teacher work extraction cannot avoid — every unique image of the split and
  every unique scored/prompt text of each shard, already decoded, transformed and tokenised in
  memory; only `encode_images` / `encode_tokens` are timed.
- `extract`: `madcache.extraction` end to end on the same split (read, decode, tokenise and YAKE in
  `--workers` processes overlapped with the forward, assemble, write zarr shards); the teacher is
  loaded once beforehand, so model construction is in neither number.

Both run alternately (`--repeats`, medians), one torch thread in the main process each time.
Goal: extract / forward >= 0.8 (examples per second). Prints a JSON line; < 2 minutes.

`--ranks 2` adds the scale-out check (docs/extraction.md, "Scaling out"): the same split
extracted by one `madcache extract` process and by 2 processes (`--rank/--world-size`, one torch
thread each, started together) into one cache; prints throughput(2 ranks) / throughput(1 rank)
(examples / the slowest rank's extraction seconds, model loading excluded) and whether the two
caches hold equal arrays.
    python benchmarks/bench_extract.py [--examples 256] [--workers 1] [--repeats 3] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from madcache.data import read_examples  # noqa: E402
from madcache.extraction import ExtractConfig, extract  # noqa: E402
from madcache.extraction.jobs import load_rgb  # noqa: E402
from madcache.extraction.plan import build_shard_plan, group_into_shards  # noqa: E402
from madcache.extraction.protocols import make_protocol  # noqa: E402
from madcache.teachers import load_teacher  # noqa: E402

VIT_B_LIKE = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 96, "layers": 6, "width": 384, "patch_size": 16},
    "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 6},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model",
        choices=["demo", "vit-b-like"],
        default="demo",
        help="demo: madcache-demo (tiny); vit-b-like: 6-layer 96 px towers",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=0,
        help="also time this many `--rank` processes against one (0: skip)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = demo_root(Path(tmp))
        name = teacher_name(args.model, Path(tmp))
        teacher = load_teacher(name, random_init=True)
        config = ExtractConfig(
            dataset="vcr",
            root=root,
            split="train",
            teacher=name,
            limit=args.examples,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            workers=args.workers,
            progress=False,
        )
        inputs = prepared_inputs(teacher, config)
        forward, full = [], []
        for repeat in range(args.repeats):
            forward.append(time_forward(teacher, inputs))
            out = Path(tmp) / f"cache-{repeat}"
            full.append(time_extract(teacher, config, out))
        if args.ranks > 1:
            print(
                json.dumps(
                    scale_out(teacher, name, config, Path(tmp), args.ranks, inputs["examples"])
                )
            )
    n = inputs["examples"]
    rate = {"forward": n / statistics.median(forward), "extract": n / statistics.median(full)}
    print(
        json.dumps(
            {
                "benchmark": "extract",
                "model": args.model,
                "examples": n,
                "images": inputs["images"],
                "texts": inputs["texts"],
                "workers": args.workers,
                "batch_size": args.batch_size,
                "forward_samples_per_s": round(rate["forward"], 1),
                "extract_samples_per_s": round(rate["extract"], 1),
                "ratio_extract_over_forward": round(rate["extract"] / rate["forward"], 3),
                "goal": ">= 0.8",
                "forward_s": [round(t, 3) for t in forward],
                "extract_s": [round(t, 3) for t in full],
            }
        )
    )


def teacher_name(model: str, tmp: Path) -> str:
    if model == "demo":
        return "madcache-demo"
    path = tmp / "bench-vit-b-like.json"
    path.write_text(json.dumps(VIT_B_LIKE))
    return f"openclip-config:{path}"


def demo_root(tmp: Path) -> Path:
    from madcache.demo.world import generate_demo_world

    generate_demo_world(tmp / "world", size="small")
    return tmp / "world" / "vcr"


def prepared_inputs(teacher, config: ExtractConfig) -> dict:
    """Pixel batches and token batches of exactly what extraction encodes, per shard."""
    examples = read_examples("vcr", config.root, "train").examples[: config.limit]
    task = make_protocol("vcr")
    transform, tokenize = teacher.image_transform(), teacher.text_processor()
    images, texts, n_images, n_texts = [], [], 0, 0
    for index, shard in enumerate(group_into_shards(examples, config.shard_size)):
        plan = build_shard_plan(index, shard)
        task.prepare(plan)
        pixels = torch.stack([transform(load_rgb(config.root, p)) for p in plan.image_paths])
        images += list(pixels.split(config.batch_size))
        for batch_texts in (plan.texts, plan.aux_texts):
            texts += [
                tokenize(batch_texts[i : i + config.batch_size])
                for i in range(0, len(batch_texts), config.batch_size)
            ]
        n_images += len(plan.image_paths)
        n_texts += len(plan.texts) + len(plan.aux_texts)
    return {
        "images": n_images,
        "texts": n_texts,
        "examples": len(examples),
        "pixel_batches": images,
        "token_batches": texts,
    }


def time_forward(teacher, inputs: dict) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for pixels in inputs["pixel_batches"]:
            teacher.encode_images(pixels)
        for tokens in inputs["token_batches"]:
            teacher.encode_tokens(tokens)
    return time.perf_counter() - started


def time_extract(teacher, config: ExtractConfig, out: Path) -> float:
    from dataclasses import replace

    started = time.perf_counter()
    extract(replace(config, out=out), teacher_loader=lambda *a, **k: teacher)
    return time.perf_counter() - started


def scale_out(teacher, name: str, config: ExtractConfig, tmp: Path, ranks: int, n: int) -> dict:
    """One process vs `ranks` processes on the same split, each a real `madcache extract`."""
    import numpy as np
    from safetensors.torch import save_file

    from madcache.cache.reader import open_cache

    checkpoint = tmp / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(checkpoint))
    args = [
        "extract",
        "--teacher",
        name,
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "vcr",
        "--root",
        str(config.root),
        "--split",
        "train",
        "--limit",
        str(config.limit),
        "--shard-size",
        str(config.shard_size),
        "--batch-size",
        str(config.batch_size),
        "--workers",
        str(config.workers),
        "--no-progress",
    ]
    one = run_ranks(args + ["--out", str(tmp / "one")], 1)
    many = run_ranks(args + ["--out", str(tmp / "many")], ranks)
    expected, actual = open_cache(tmp / "one").arrays(), open_cache(tmp / "many").arrays()
    equal = sorted(expected) == sorted(actual) and all(
        np.array_equal(expected[k], actual[k], equal_nan=expected[k].dtype.kind == "f")
        for k in expected
    )
    return {
        "benchmark": "extract-scale-out",
        "ranks": ranks,
        "cores": os.cpu_count(),
        "one_rank_samples_per_s": round(n / max(one), 1),
        f"{ranks}_ranks_samples_per_s": round(n / max(many), 1),
        "ratio_ranks_over_one": round(max(one) / max(many), 3),
        "rank_seconds": [round(t, 2) for t in many],
        "caches_equal": equal,
    }


def run_ranks(args: list[str], ranks: int) -> list[float]:
    """Start `ranks` processes together; each one's extraction seconds (from its summary)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    flags = [
        [] if ranks == 1 else ["--rank", str(r), "--world-size", str(ranks)] for r in range(ranks)
    ]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "madcache", *args, *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in flags
    ]
    seconds = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"madcache extract failed: {err[-2000:]}")
        seconds.append(
            float(next(line.split()[1] for line in out.splitlines() if line.startswith("seconds")))
        )
    return seconds


if __name__ == "__main__":
    main()
