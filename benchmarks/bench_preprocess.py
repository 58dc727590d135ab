"""Extraction's CPU side per example, on the real VCR samples: can 16 cores keep a GPU busy?

Measured on `../shared/fixtures/real/vcr` (the 159 VCR val annotation lines, 143 images named
there, and the one real image of the fixture, decoded as many times as there are images), one
thread, before and after the changes of issue 29 item 6, interleaved in one process:

- `read`: JSON parsing + word splitting (the VCR reader builds each `Text` from its tokens);
- `decode`: JPEG decode to RGB: before, `Image.open(..).convert("RGB")` (a whole-frame copy of an
  RGB JPEG); after, `extraction.jobs.load_rgb` (the decoded image itself);
- `transform`: the ViT-B/16 CLIP image transform (resize 224, crop, normalise), unchanged;
- `bpe`: open_clip's BPE, word by word (`WordTokenizer`, per-process word memo cold);
- `yake`: YAKE keyword scores + content words per scored text (memos cold: every text new);
  before, the content-word rule ran twice per text (inside the YAKE scores and for the stored
  mask), after once (memoised per text);
- `preprocessor`: the real `Preprocessor` over the real shard's jobs (images and texts), memos
  cold, its per-example total (a check on the sum of the steps).

The image paths of `--image-decode` side by side (`image_paths`; docs/extraction.md): `exact`
is the `after` variant; `crop-first` and `tensor` replace the transform by theirs
(`images.worker_transform`: PIL's resize of the crop box, torchvision's uint8 resize); `gpu`
replaces decode + transform by the workers' file read (`images.read_encoded`: bytes + header),
its decode + resize running on the extraction device, which this CPU run cannot measure
(`device_side_on_this_cpu_ms` is what it costs when that device is this CPU, for the record;
benchmarks/gpu_check.sh measures the GPU's). Each path's `preprocessor_ms` is the real
`Preprocessor` with that `image_decode` over the shard's jobs.

Beside the timings (not with `--quick`), `image_path_tolerance`: each path against `exact` on
every real JPEG of the fixtures (pixels, and a ViT-B-16's image features).

Prints each cost per example (an example is one QA or QA->R item; a VCR image serves
`examples / images` of them), the projection for a 16-core node, 15 worker processes (the main
process feeds the GPU) x 1 / (CPU seconds per example), against what a ViT-B/16 image tower
consumes at clip-retrieval's ~1,100 images/s per A100, and what extraction's default `--workers`
gives on that node: before, 0 (one process prepares and feeds the GPU: at best 1 / cost); after,
`preprocess_workers`' count, 15.
    python benchmarks/bench_preprocess.py [--root ../shared/fixtures/real/vcr] [--repeats 5]
    python benchmarks/bench_preprocess.py --quick     (24 examples, 1 repeat: tests)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANNOTATIONS = "annotations/vcr_cs_val_original.jsonl"
CORES = 16
WORKERS_16_CORES = CORES - 1
CLIP_RETRIEVAL_A100 = 1100
PATHS = ("exact", "crop-first", "tensor", "gpu")


def load_rgb_before(root: Path, relative: str):
    """`load_rgb` before this change: `convert("RGB")` copies an RGB JPEG whole."""
    from PIL import Image

    with Image.open(root / relative) as image:
        return image.convert("RGB")


@contextlib.contextmanager
def before_change():
    """Extraction as it was: the copying decode and the content-word rule without its memo."""
    from madcache.extraction import jobs, scores

    saved = jobs.load_rgb, scores._content_words
    jobs.load_rgb, scores._content_words = load_rgb_before, scores._content_words.__wrapped__
    try:
        yield
    finally:
        jobs.load_rgb, scores._content_words = saved


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, the variants alternating within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def path_variants(root, image, images, transform, preprocessors, shard, cold) -> dict:
    """The steps that differ between image paths (`exact` is the `after` variant): crop-first's
    and tensor's transforms; gpu's worker side (file bytes + header) and, for the record, what its device side
    costs when the device is this CPU (libjpeg-turbo decode + uint8 tensor resize)."""
    from madcache.extraction import images as paths
    from madcache.extraction.jobs import load_rgb

    decoded = load_rgb(root, image)
    cropping = paths.worker_transform("crop-first", transform, teacher="ViT-B-16")
    on_pil = paths.worker_transform("tensor", transform, teacher="ViT-B-16")
    tensor = paths.TensorTransform.of(transform, teacher="ViT-B-16")
    encoded = paths.read_encoded(root, image)

    def device_side_on_cpu():
        for _ in range(images):
            tensor(paths.decode_on([encoded], "cpu", root=root, paths=[image]))

    def preprocessor(decode):
        def run():
            cold()
            for job in shard:
                preprocessors[decode](job)

        return run

    return {
        "transform/crop-first": lambda: [cropping(decoded) for _ in range(images)],
        "transform/tensor": lambda: [on_pil(decoded) for _ in range(images)],
        "read_bytes/gpu": lambda: [paths.read_encoded(root, image) for _ in range(images)],
        "device_side_on_cpu/gpu": device_side_on_cpu,
        "preprocessor/crop-first": preprocessor("crop-first"),
        "preprocessor/tensor": preprocessor("tensor"),
        "preprocessor/gpu": preprocessor("gpu"),
    }


def path_table(exact: dict, seconds: dict, n: int, gpu_rate: float) -> dict:
    """Per image path: the CPU milliseconds per example of the workers' steps (the text steps
    are the same in every path), and what 15 workers of a 16-core node prepare per second
    against the GPU's rate. gpu's device side is not a worker cost: listed apart."""

    def ms(key: str) -> float:
        return round(1e3 * seconds[key] / n, 3)

    text = {k: exact[k] for k in ("read", "bpe", "yake")}
    steps = {
        "exact": {**text, "decode": exact["decode"], "transform": exact["transform"]},
        "crop-first": {**text, "decode": exact["decode"], "transform": ms("transform/crop-first")},
        "tensor": {**text, "decode": exact["decode"], "transform": ms("transform/tensor")},
        "gpu": {**text, "read_bytes": ms("read_bytes/gpu")},
    }
    table = {}
    for path, per_example in steps.items():
        cost = sum(per_example.values())
        rate = WORKERS_16_CORES * 1e3 / cost
        whole = exact["preprocessor"] if path == "exact" else ms(f"preprocessor/{path}")
        table[path] = {
            "per_example_ms": per_example,
            "preprocessor_ms": whole,
            "cpu_ms_per_example": round(cost, 3),
            "dominant": max(per_example, key=per_example.get),
            "projected_examples_per_s_16_cores": round(rate, 1),
            "over_gpu_rate": round(rate / gpu_rate, 2),
        }
    table["gpu"]["device_side"] = (
        "unmeasured here (no GPU): decode + resize on the extraction device; "
        "benchmarks/gpu_check.sh measures it"
    )
    table["gpu"]["device_side_on_this_cpu_ms"] = ms("device_side_on_cpu/gpu")
    return table


def tolerance(fixtures: Path, transform) -> dict:
    """Each path against `exact` on every real JPEG under `fixtures` (all datasets' samples):
    pixels (normalised units; one grey level = 1 / 255 / std) and the image features of
    open_clip ViT-B-16 (random weights, seed 0: no pretrained weights can be had here), as the
    largest and the mean |diff| over all images, and the features' largest relative diff."""
    import torch

    from madcache.extraction import images as paths
    from madcache.extraction.jobs import load_rgb
    from madcache.teachers.clip import create_model

    files = sorted(p.relative_to(fixtures).as_posix() for p in fixtures.rglob("*.jpg"))
    tensor = paths.TensorTransform.of(transform, teacher="ViT-B-16")
    pixels: dict[str, list] = {path: [] for path in PATHS}
    for relative in files:
        image = load_rgb(fixtures, relative)
        for path in ("exact", "crop-first", "tensor"):
            worker = paths.worker_transform(path, transform, teacher="ViT-B-16")
            pixels[path].append(worker(image))
        encoded = [paths.read_encoded(fixtures, relative)]
        pixels["gpu"].append(
            tensor(paths.decode_on(encoded, "cpu", root=fixtures, paths=[relative]))[0]
        )
    torch.manual_seed(0)
    model = create_model("ViT-B-16").eval()
    batches = {path: torch.stack(images) for path, images in pixels.items()}
    with torch.inference_mode():
        features = {path: model.encode_image(batch) for path, batch in batches.items()}
    grey = 1 / 255 / min(transform.transforms[-1].std)
    out = {"images": len(files), "grey_level": round(grey, 5)}
    for path in PATHS[1:]:
        dp = (batches[path] - batches["exact"]).abs()
        df = (features[path] - features["exact"]).abs()
        norm = features["exact"].norm(dim=1, keepdim=True)
        out[path] = {
            "pixels_max": round(float(dp.max()), 5),
            "pixels_mean": float(f"{float(dp.mean()):.3g}"),
            "pixels_off_fraction": float(f"{float((dp > 1e-6).float().mean()):.3g}"),
            "features_max": float(f"{float(df.max()):.3g}"),
            "features_mean": float(f"{float(df.mean()):.3g}"),
            "features_max_relative": float(f"{float((df.norm(dim=1) / norm[:, 0]).max()):.3g}"),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(
            os.environ.get("MADCACHE_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real")
        )
        / "vcr",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="24 examples, 1 repeat (tests)")
    args = parser.parse_args(argv)
    if not (args.root / ANNOTATIONS).is_file():
        result = {
            "benchmark": "preprocess",
            "skipped": f"no real VCR samples at {args.root} (set MADCACHE_REAL_FIXTURES)",
        }
        print(json.dumps(result))
        return result

    import open_clip
    import torch

    from madcache.data import read_examples, wordpieces
    from madcache.extraction import jobs, scores
    from madcache.extraction.images import worker_transform
    from madcache.extraction.plan import build_shard_plan

    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    everything = read_examples("vcr", args.root, ANNOTATIONS, skip_bad=True).examples
    examples = everything[:24] if args.quick else everything
    images = len({e.image_id for e in examples})
    texts = [t for e in examples for t in e.texts]
    image = str(next(p.relative_to(args.root) for p in (args.root / "vcr1images").rglob("*.jpg")))
    config = open_clip.get_model_config("ViT-B-16")
    preprocess = open_clip.transform.PreprocessCfg(size=config["vision_cfg"]["image_size"])
    transform = open_clip.transform.image_transform_v2(preprocess, is_train=False)
    tokenizer = wordpieces.WordTokenizer(config["text_cfg"]["context_length"])
    decoded = jobs.load_rgb(args.root, image)
    preprocessors = {
        decode: jobs.Preprocessor(
            args.root,
            image_transforms={"clip": worker_transform(decode, transform, teacher="ViT-B-16")},
            text_processors={"clip": tokenizer},
            aux_processors={},
            yake=jobs.YakeSettings(),
            forward_batch=64,
            image_decode=decode,
        )
        for decode in PATHS
    }
    preprocessor = preprocessors["exact"]
    plan = build_shard_plan(0, examples)
    plan.image_paths = [image] * len(plan.image_paths)  # the fixture's one real frame
    shard = jobs.shard_jobs(plan, 64, with_aux=False, forward_batch=64)

    memos = (wordpieces._word_pieces, scores._yake_word_scores, scores._content_words)

    def cold():
        for memo in memos:
            memo.cache_clear()

    def decode():
        return [jobs.load_rgb(args.root, image) for _ in range(images)]

    def bpe_cold():
        cold()
        tokenizer(texts)

    def yake_cold():
        cold()
        for text in texts:
            scores.yake_word_scores(text)
            scores.content_words(text)

    def preprocessor_cold():
        cold()
        for job in shard:
            preprocessor(job)

    def before(fn):
        def run():
            with before_change():
                fn()

        return run

    steps = {
        "read": lambda: read_examples("vcr", args.root, ANNOTATIONS, skip_bad=True),
        "decode": decode,
        "transform": lambda: [transform(decoded) for _ in range(images)],
        "bpe": bpe_cold,
        "yake": yake_cold,
        "preprocessor": preprocessor_cold,
    }
    variants = {}
    for name, fn in steps.items():
        variants[f"{name}/before"] = before(fn)
        variants[f"{name}/after"] = fn
    variants.update(path_variants(args.root, image, images, transform, preprocessors, shard, cold))
    seconds = interleaved(variants, repeats)
    n = len(examples)
    table = {}
    for variant in ("before", "after"):
        ms = {name: 1e3 * seconds[f"{name}/{variant}"] / n for name in steps}
        ms["read"] *= n / len(everything)  # the reader reads the whole file
        ms = {k: round(v, 3) for k, v in ms.items()}
        cost = sum(v for k, v in ms.items() if k != "preprocessor")
        workers = (
            0
            if variant == "before"
            else jobs.preprocess_workers(None, "cuda", cores=CORES, environ={})
        )
        table[variant] = {
            "per_example_ms": ms,
            "cpu_ms_per_example": round(cost, 3),
            "dominant": max((k for k in ms if k != "preprocessor"), key=ms.get),
            "projected_examples_per_s_16_cores": round(WORKERS_16_CORES * 1e3 / cost, 1),
            "default_workers_16_core_cuda_node": workers,
            "default_examples_per_s_16_core_cuda_node": round(max(workers, 1) * 1e3 / cost, 1),
        }
    gpu_rate = CLIP_RETRIEVAL_A100 * n / images
    result = {
        "benchmark": "preprocess",
        "quick": args.quick,
        "examples": n,
        "images": images,
        "texts": len(texts),
        "image_size": list(decoded.size),
        "repeats": repeats,
        **table,
        "after_over_before_cpu_ms": round(
            table["after"]["cpu_ms_per_example"] / table["before"]["cpu_ms_per_example"], 3
        ),
        "clip_retrieval_a100_examples_per_s": round(gpu_rate, 1),
        "image_paths": path_table(table["after"]["per_example_ms"], seconds, n, gpu_rate),
    }
    if not args.quick:
        result["image_path_tolerance"] = tolerance(args.root.parent, transform)
    for path, row in result["image_paths"].items():
        print(
            f"--image-decode {path:<10} {row['cpu_ms_per_example']:7.2f} CPU ms / example -> "
            f"{row['projected_examples_per_s_16_cores']:8.1f} examples/s on {WORKERS_16_CORES} "
            f"workers = {row['over_gpu_rate']:.2f} x the GPU's {gpu_rate:,.0f}/s"
            + (" (+ its device side, unmeasured)" if path == "gpu" else "")
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
