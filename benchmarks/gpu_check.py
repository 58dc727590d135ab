"""The GPU figures of docs/performance.md, side by side in one run (`benchmarks/gpu_check.sh`).

1. Extraction with a real ViT-B/16 CLIP architecture (open_clip's `ViT-B-16` config, random
   weights saved as a local checkpoint) on the demo world's VCR train split, its images
   re-encoded as 224 px JPEGs: `madcache.extraction` end to end vs the bare teacher forward
   (the same towers on the same pre-decoded batches, same bf16 autocast). Goal: extract /
   forward >= 0.9 (examples/s). The image tower's images/s is printed beside clip-retrieval's
   published ~1,100 images/s per A100 (image embedding inference, decoding included).
2. The image paths of `--image-decode` (madcache/extraction/images.py) on full-size frames
   (1920 x 797 JPEGs, as VCR's): images/s of each path's CPU side in `--workers` processes,
   and of the gpu path's device side (nvjpeg decode + resize + crop + normalise, batches of
   64), with its pixels' difference from the CPU tensor path's.
3. One training step of a base-size student (the built-in single-stream student: hidden 768,
   12 layers, 12 heads) in bf16: cached MAD / baseline (goal <= 1.05), and MAD fp32 / bf16.
4. Peak GPU memory of each part.

`--dry`: tiny shapes on the CPU (a 32 px tiny CLIP, 8 examples, eight 64 x 48 frames, a
1-layer student, no nvjpeg, no worker pool); it checks that every part still runs (the CPU test suite runs it:
tests/test_benchmarks.py), and its numbers mean nothing.
    python benchmarks/gpu_check.py [--dry] [--workers 15] [--iters 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIP_RETRIEVAL_A100 = 1100  # images/s per A100, clip-retrieval's README (ViT-B/16)
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
BASE_STUDENT = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
TINY_STUDENT = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def load_bench(name: str):
    """benchmarks/NAME.py as a module (this folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, str(HERE / f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)


# ----------------------------------------------------------------------------- 1. extraction


def make_world(tmp: Path, *, dry: bool, size: int) -> Path:
    """The demo world's VCR split with its train images re-encoded as `size` px JPEGs."""
    from PIL import Image

    from madcache.demo.world import generate_demo_world

    generate_demo_world(tmp / "world", size="small" if dry else "default")
    root = tmp / "world" / "vcr"
    for path in (root / "vcr1images").rglob("*.jpg"):
        with Image.open(path) as image:
            image.convert("RGB").resize((size, size), Image.BICUBIC).save(path, quality=90)
    return root


def clip_teacher(tmp: Path, *, dry: bool) -> tuple[str, Path]:
    """(teacher name, checkpoint) of a randomly initialised open_clip ViT-B/16 (or tiny) CLIP."""
    import open_clip
    from safetensors.torch import save_file

    config = TINY_CLIP if dry else open_clip.get_model_config("ViT-B-16")
    path = tmp / ("tiny-clip.json" if dry else "vit-b-16.json")
    path.write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.CLIP(**config).eval()
    checkpoint = tmp / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return f"openclip-config:{path}", checkpoint


def extraction(tmp: Path, root: Path, device: str, *, dry: bool, workers: int) -> dict:
    from madcache.extraction import ExtractConfig, extract
    from madcache.extraction.run import _autocast
    from madcache.teachers import load_teacher

    bench = load_bench("bench_extract")
    name, checkpoint = clip_teacher(tmp, dry=dry)
    teacher = load_teacher(name, checkpoint=checkpoint, device=device)
    batch = 8 if dry else 256
    config = ExtractConfig(
        dataset="vcr",
        root=root,
        split="train",
        teacher=name,
        checkpoint=checkpoint,
        device=device,
        limit=8 if dry else None,
        batch_size=batch,
        forward_batch=batch,
        shard_size=1024,
        workers=workers,
        progress=False,
    )
    inputs = bench.prepared_inputs(teacher, config)
    pixels = [p.to(device) for p in inputs["pixel_batches"]]
    tokens = [t.to(device) if torch.is_tensor(t) else t for t in inputs["token_batches"]]

    def forward() -> tuple[float, float]:
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode(), _autocast(device):
            for batch_pixels in pixels:
                teacher.encode_images(batch_pixels)
            sync(device)
            images_done = time.perf_counter()
            for batch_tokens in tokens:
                teacher.encode_tokens(batch_tokens)
        sync(device)
        return time.perf_counter() - started, images_done - started

    def full(out: Path, image_decode: str = "exact") -> float:
        started = time.perf_counter()
        run = replace(config, out=out, image_decode=image_decode)
        extract(run, teacher_loader=lambda *a, **k: teacher)
        sync(device)
        return time.perf_counter() - started

    forward()  # warm-up (kernels, autotuning)
    peak_gib(device)
    repeats = 1 if dry else 2
    forwards, extracts = [], []
    for repeat in range(repeats):
        forwards.append(forward())
        extracts.append(full(tmp / f"cache-{repeat}"))
    n, images = inputs["examples"], inputs["images"]
    forward_s = statistics.median(f[0] for f in forwards)
    image_s = statistics.median(f[1] for f in forwards)
    extract_s = statistics.median(extracts)
    gpu_path_s = full(tmp / "cache-gpu-path", "gpu")
    return {
        "teacher": "tiny CLIP" if dry else "open_clip ViT-B-16 (random weights)",
        "examples": n,
        "images": images,
        "texts": inputs["texts"],
        "workers": workers,
        "forward_examples_per_s": round(n / forward_s, 1),
        "extract_examples_per_s": round(n / extract_s, 1),
        "extract_over_forward": round(forward_s / extract_s, 3),
        "extract_gpu_image_path_examples_per_s": round(n / gpu_path_s, 1),
        "image_tower_images_per_s": round(images / max(image_s, 1e-9), 1),
        "peak_gib": peak_gib(device),
    }


# ----------------------------------------------------------------------------- 2. image paths


PATHS = ("exact", "crop-first", "tensor", "gpu")
_POOL: dict = {}  # what forked pool workers inherit: the transforms of each image path


def make_frames(tmp: Path, *, dry: bool) -> list[Path]:
    """Full-size frames as JPEGs (VCR's are movie frames, e.g. 1920 x 797): smooth gradients
    plus noise, quality 90, so decoding and resizing cost what a real frame costs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    height, width = (48, 64) if dry else (797, 1920)
    y, x = np.mgrid[0:height, 0:width] / width
    folder = tmp / "frames"
    folder.mkdir()
    paths = []
    for i in range(8 if dry else 64):
        phase = rng.uniform(0, 3, 3)
        smooth = np.stack([np.sin(7 * x + p) + np.cos(5 * y + 2 * p) for p in phase], -1)
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = (smooth * 60 + 128 + noise).clip(0, 255).astype(np.uint8)
        paths.append(folder / f"frame{i}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def _worker_side(job: tuple[str, str]) -> int:
    """One image's CPU-worker work under an image path (what `Preprocessor.images` does)."""
    from madcache.extraction.images import read_encoded
    from madcache.extraction.jobs import load_rgb

    path, name = job
    folder, name = str(Path(name).parent), Path(name).name
    if path == "gpu":
        return int(read_encoded(Path(folder), name).numel())
    return int(_POOL[path](load_rgb(Path(folder), name)).numel())


def image_paths(tmp: Path, device: str, *, dry: bool, workers: int) -> dict:
    """Each `--image-decode` path on full-size frames, images/s: the CPU side in `workers`
    forked processes, and the gpu path's device side (`decode_on` + `TensorTransform`, batches
    of 64: nvjpeg and CUDA resize on a GPU); its pixels vs the CPU tensor path's."""
    import multiprocessing

    from open_clip.transform import PreprocessCfg, image_transform_v2

    from madcache.extraction.images import (
        TensorTransform,
        decode_on,
        read_encoded,
        worker_transform,
    )

    frames = make_frames(tmp, dry=dry)
    transform = image_transform_v2(PreprocessCfg(size=32 if dry else 224), is_train=False)
    for path in PATHS:
        _POOL[path] = worker_transform(path, transform, teacher="ViT-B-16")
    names = [str(p) for p in frames] * (1 if dry else 3)
    out: dict = {
        "frames": f"{len(frames)} x {frame_size(frames[0])}",
        "cpu_workers": max(workers, 1),
    }
    for path in PATHS:
        jobs = [(path, name) for name in names]
        if workers <= 1:
            started = time.perf_counter()
            for job in jobs:
                _worker_side(job)
        else:
            # fork: the workers inherit _POOL and never touch CUDA; one thread each, as
            # extraction's DataLoader workers
            fork = multiprocessing.get_context("fork")
            with fork.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                pool.map(_worker_side, jobs[:workers], chunksize=1)  # start-up not counted
                started = time.perf_counter()
                pool.map(_worker_side, jobs, chunksize=4)
        out[f"cpu_side_{path}_images_per_s"] = round(len(jobs) / (time.perf_counter() - started), 1)
    tensor = TensorTransform.of(transform, teacher="ViT-B-16")
    folder = frames[0].parent
    files = [p.name for p in frames]
    encoded = [read_encoded(folder, name) for name in files]
    batch = 8 if dry else 64

    def device_side() -> float:
        sync(device)
        started = time.perf_counter()
        for _ in range(1 if dry else 3):
            for i in range(0, len(encoded), batch):
                chunk = slice(i, i + batch)
                tensor(decode_on(encoded[chunk], device, root=folder, paths=files[chunk]))
        sync(device)
        return time.perf_counter() - started

    device_side()  # warm-up
    peak_gib(device)
    seconds = device_side()
    on_device = tensor(decode_on(encoded, device, root=folder, paths=files)).cpu()
    on_cpu = tensor(decode_on(encoded, "cpu", root=folder, paths=files))
    diff = (on_device - on_cpu).abs()
    grey = 1 / 255 / min(transform.transforms[-1].std)
    out.update(
        {
            "decoder": "nvjpeg" if device.startswith("cuda") else "libjpeg-turbo (CPU, dry)",
            "device_side_images_per_s": round(len(encoded) * (1 if dry else 3) / seconds, 1),
            "device_vs_cpu_pixels_max_grey_levels": round(float(diff.max()) / grey, 2),
            "device_vs_cpu_pixels_mean": float(f"{float(diff.mean()):.3g}"),
            "peak_gib": peak_gib(device),
        }
    )
    return out


def frame_size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.size[0]} x {image.size[1]}"


# ----------------------------------------------------------------------------- 3. steps


def steps(device: str, *, dry: bool, iters: int) -> dict:
    """Median step time of baseline / MAD on cached targets, bf16 and fp32, interleaved."""
    from madcache.students import build_student
    from madcache.students.base import to_device
    from madcache.train.loop import StageLoss
    from madcache.train.precision import autocast, configure_matmuls
    from madcache.train.stream import MicroBatch

    bench = load_bench("bench_train_step")
    configure_matmuls(device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    student = build_student(
        "single-stream", region_dim=64, **(TINY_STUDENT if dry else BASE_STUDENT)
    ).to(device)
    size, dim = (2, 16) if dry else (32, 512)
    regions = bench.visual_inputs(student, size)
    batches = [bench.make_batch(size, rng) for _ in range(4)]
    inputs = [to_device(student.prepare(b, regions), device) for b in batches]
    cached = [to_device(bench.cached_targets(b, dim, dim, 2, rng), device) for b in batches]

    setups = {
        method: bench.step_setup(student, method, dim=dim, device=device, regions=regions)
        for method in ("baseline", "mad")
    }
    losses = {method: StageLoss(setup) for method, setup in setups.items()}
    runs = {
        "baseline-bf16": ("baseline", "bf16"),
        "mad-bf16": ("mad", "bf16"),
        "mad-fp32": ("mad", "fp32"),
    }
    params = list(student.parameters()) + [
        p for s in setups.values() for p in s.projections.parameters()
    ]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names, warmup = list(runs), 1 if dry else 3
    peak_gib(device)
    for it in range(warmup + iters):
        k, shift = it % len(batches), it % len(names)
        for name in names[shift:] + names[:shift]:  # no variant always runs first
            method, precision = runs[name]
            sync(device)
            started = time.perf_counter()
            with autocast(precision, device):
                micro = MicroBatch(
                    batches[k], None if method == "baseline" else cached[k], inputs[k], 1.0
                )
                loss, _ = losses[method](stage="task", micro=micro, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            if it >= warmup:
                times[name].append(time.perf_counter() - started)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {
        "student": "single-stream " + ("tiny" if dry else "base (768 x 12)"),
        "batch_size": size,
        "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "mad_over_baseline_bf16": round(med["mad-bf16"] / med["baseline-bf16"], 3),
        "fp32_over_bf16_mad": round(med["mad-fp32"] / med["mad-bf16"], 3),
        "peak_gib": peak_gib(device),
    }


# ----------------------------------------------------------------------------- report


def report(device_name: str, ex: dict, dec: dict, st: dict) -> str:
    rows = [
        (
            "extract / teacher forward (examples/s)",
            f"{ex['extract_examples_per_s']} / {ex['forward_examples_per_s']} = "
            f"{ex['extract_over_forward']}",
            ">= 0.9",
        ),
        (
            "extract --image-decode gpu (examples/s)",
            str(ex["extract_gpu_image_path_examples_per_s"]),
            "",
        ),
        (
            "image tower alone (images/s)",
            str(ex["image_tower_images_per_s"]),
            f"clip-retrieval ~{CLIP_RETRIEVAL_A100}/A100",
        ),
        (
            f"image path CPU side, {dec['cpu_workers']} workers, {dec['frames']} (img/s)",
            " / ".join(f"{p} {dec[f'cpu_side_{p}_images_per_s']}" for p in PATHS),
            "",
        ),
        (
            f"image path gpu, device side: {dec['decoder']} + resize (img/s)",
            f"{dec['device_side_images_per_s']} (vs CPU: max "
            f"{dec['device_vs_cpu_pixels_max_grey_levels']} grey, mean "
            f"{dec['device_vs_cpu_pixels_mean']})",
            "",
        ),
        ("cached MAD / baseline step, bf16", str(st["mad_over_baseline_bf16"]), "<= 1.05"),
        ("MAD step fp32 / bf16 (speed-up)", str(st["fp32_over_bf16_mad"]), ""),
        (
            "peak GPU memory GiB (extract, decode, steps)",
            f"{ex['peak_gib']}, {dec['peak_gib']}, {st['peak_gib']}",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"device: {device_name}"]
    lines += [f"{name:<{width}}  {value:<28} {goal}" for name, value, goal in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; use --dry to check that the script runs",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.dry else "cuda"
    torch.set_num_threads(1 if args.dry else min(8, os.cpu_count() or 1))
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)"
    workers = 0 if args.dry else args.workers
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        root = make_world(tmp, dry=args.dry, size=32 if args.dry else 224)
        ex = extraction(tmp, root, device, dry=args.dry, workers=workers)
        dec = image_paths(tmp, device, dry=args.dry, workers=workers)
    st = steps(device, dry=args.dry, iters=2 if args.dry else args.iters)
    print(report(name, ex, dec, st))
    print(
        json.dumps(
            {
                "benchmark": "gpu_check",
                "device": name,
                "dry": args.dry,
                "extraction": ex,
                "image_paths": dec,
                "steps": st,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
