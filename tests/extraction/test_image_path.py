"""`--image-decode`: the crop-first, tensor and gpu image paths against the exact one (pixels and a
teacher's image features), images that are not RGB JPEGs, the fingerprint entry that keeps
caches of different paths apart, and the cuda path against the CPU tensor path (`gpu`).

Tolerances, with ViT-B/16's transform (224 px bicubic, CLIP's mean / std; docs/performance.md),
in normalised units (one grey level = 1 / 255 / std <= 0.0150), measured:
- the 9 real JPEGs of ../shared/fixtures/real: every path within one grey level of `exact` in
  every pixel; worst mean |diff| of an image crop-first 4.9e-6, tensor = gpu (CPU decode)
  7.4e-5. Asserted: one grey level, mean <= MEAN_BOUND;
- generated images (smooth gradients; landscape, portrait, smaller than the crop, grayscale,
  CMYK, RGBA, palette): within two grey levels (crop-first on a frame barely larger than the
  crop, tensor / gpu when upsampling); worst mean crop-first 3.8e-5, tensor = gpu 1.6e-4.
  Asserted: two grey levels, MEAN_BOUND.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from madcache.cli import cli
from madcache.core.errors import ConfigError, DataError
from madcache.extraction import ExtractConfig, extract
from madcache.extraction.images import (
    TensorTransform,
    crop_first,
    decode_on,
    fingerprint_entry,
    read_encoded,
    worker_transform,
)
from madcache.extraction.jobs import load_rgb

MEAN_BOUND = 3e-4


def vit_b16_transform():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(size=224), is_train=False)


def grey_levels(transform, n: int = 1) -> float:
    """`n` grey levels in normalised units: n / 255 / the smallest std."""
    return n / 255 / min(transform.transforms[-1].std) + 1e-6


def paths_of(root: Path, relative: str, transform) -> dict[str, torch.Tensor]:
    exact = transform(load_rgb(root, relative))
    encoded = read_encoded(root, relative)
    tensor = TensorTransform.of(transform, teacher="t")
    return {
        "exact": exact,
        "crop-first": worker_transform("crop-first", transform, teacher="t")(
            load_rgb(root, relative)
        ),
        "tensor": worker_transform("tensor", transform, teacher="t")(load_rgb(root, relative)),
        "gpu": tensor(decode_on([encoded], "cpu", root=root, paths=[relative]))[0],
    }


PATHS = ("crop-first", "tensor", "gpu")


@pytest.mark.real
def test_both_paths_are_within_one_grey_level_on_real_jpegs(real_root):
    transform = vit_b16_transform()
    files = sorted(p.relative_to(real_root).as_posix() for p in real_root.rglob("*.jpg"))
    assert len(files) >= 9
    for relative in files:
        pixels = paths_of(real_root, relative, transform)
        assert read_encoded(real_root, relative).dim() == 1  # RGB JPEGs travel as bytes
        # libjpeg-turbo on the CPU decodes as PIL does: gpu on the CPU == tensor
        assert torch.equal(pixels["gpu"], pixels["tensor"])
        for path in PATHS:
            diff = (pixels[path] - pixels["exact"]).abs()
            assert pixels[path].shape == (3, 224, 224)
            assert diff.max() <= grey_levels(transform), (relative, path)
            assert diff.mean() <= MEAN_BOUND, (relative, path, float(diff.mean()))


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like image (gradients and blobs, not noise), uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [
        np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 3)) + np.cos(5 * y + rng.uniform(0, 3))
        for _ in range(3)
    ]
    return (np.stack(channels, -1) * 60 + 128).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "mode, suffix, size",
    [
        ("RGB", "jpg", (300, 451)),  # landscape, odd width
        ("RGB", "jpg", (517, 230)),  # portrait
        ("RGB", "jpg", (150, 120)),  # smaller than the crop: upsampled
        ("L", "jpg", (240, 320)),
        ("CMYK", "jpg", (240, 320)),
        ("RGBA", "png", (240, 320)),
        ("P", "png", (240, 320)),
    ],
)
def test_both_paths_on_generated_images_of_any_mode(tmp_path, mode, suffix, size):
    """Grayscale / CMYK JPEGs and PNGs are decoded by PIL in the worker (as tensors), RGB JPEGs
    travel as bytes; every path stays within the bounds of `exact`."""
    Image.fromarray(smooth(*size, seed=size[0])).convert(mode).save(tmp_path / f"x.{suffix}")
    transform = vit_b16_transform()
    encoded = read_encoded(tmp_path, f"x.{suffix}")
    assert encoded.dim() == (1 if (mode, suffix) == ("RGB", "jpg") else 3)
    pixels = paths_of(tmp_path, f"x.{suffix}", transform)
    for path in PATHS:
        diff = (pixels[path] - pixels["exact"]).abs()
        assert diff.max() <= grey_levels(transform, 2), path
        assert diff.mean() <= MEAN_BOUND, (path, float(diff.mean()))
    assert pixels["exact"].std() > 0.1


def test_a_truncated_jpeg_names_its_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(smooth(256, 320, seed=1)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 4 // 5])
    encoded = read_encoded(tmp_path, "cut.jpg")  # the header reads fine
    with pytest.raises(DataError, match=r"cut\.jpg.*incomplete or truncated"):
        decode_on([encoded], "cpu", root=tmp_path, paths=["cut.jpg"])


def test_transforms_the_tensor_path_cannot_run_are_refused():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    longest = image_transform_v2(PreprocessCfg(size=224, resize_mode="longest"), is_train=False)
    with pytest.raises(ConfigError, match=r"teacher t's .*ResizeKeepRatio.*--image-decode exact"):
        worker_transform("tensor", longest, teacher="t")
    squash = image_transform_v2(PreprocessCfg(size=224, resize_mode="squash"), is_train=False)
    assert TensorTransform.of(squash, teacher="t").crop is None
    assert crop_first(squash) is squash  # no crop: nothing to save


def test_a_transformers_processor_transform_converts_first(tmp_path):
    """madcache.data.pixels (the transformers teachers' transform) converts to RGB before it
    resizes: crop-first and the tensor path still find its resize + crop (a CLIP processor:
    shortest edge 64, bicubic, crop 48)."""
    import json

    from madcache.data.pixels import processor_transform

    config = {"do_center_crop": True, "size": {"shortest_edge": 64}, "resample": 3}
    config |= {"crop_size": {"height": 48, "width": 48}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    transform = processor_transform(tmp_path, 48)
    Image.fromarray(smooth(120, 200, seed=5)).save(tmp_path / "x.jpg")
    assert TensorTransform.of(transform, teacher="t").crop == (48, 48)
    assert type(crop_first(transform)).__name__ == "CropFirst"
    pixels = paths_of(tmp_path, "x.jpg", transform)
    for path in PATHS:
        assert pixels[path].shape == (3, 48, 48)
        assert (pixels[path] - pixels["exact"]).abs().max() <= 2 / 255 / 0.5 + 1e-6, path


# --- extraction with each path -------------------------------------------------------------


def extract_paths(root: Path, tiny_clip, out: Path, device: str, decodes) -> dict[str, Path]:
    """The real SNLI-VE sample (2 real JPEGs, 16 pairs) extracted with each image path on
    `device`; gpu's bytes come from a worker process (the payload crosses the DataLoader's
    queue)."""
    name, checkpoint = tiny_clip
    for decode in decodes:
        extract(
            ExtractConfig(
                dataset="snli-ve",
                root=root / "snli_ve" / "allennlp_fixture",
                split="sample_pairs.jsonl",
                teacher=name,
                checkpoint=checkpoint,
                dtype="float32",
                device=device,
                image_decode=decode,
                workers=1 if decode == "gpu" else 0,
                progress=False,
                out=out / decode,
            )
        )
    return {decode: out / decode for decode in decodes}


@pytest.fixture(scope="module")
def snli_paths(real_root, tiny_clip, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("paths")
    return extract_paths(real_root, tiny_clip, out, "cpu", ("exact", *PATHS))


@pytest.mark.real
def test_extraction_features_of_each_path(snli_paths, cache):
    """The tiny CLIP's image features (32 px, norm ~3.5) from each path vs exact: measured
    max |diff| crop-first 9.7e-5 (mean 1.9e-5), tensor = gpu 2.7e-4 (mean 8.6e-5); asserted
    <= 2e-3."""
    exact = cache.shards(snli_paths["exact"])[0]["image_feat"]
    assert np.linalg.norm(exact, axis=1).min() > 1
    for decode in PATHS:
        feat = cache.shards(snli_paths[decode])[0]["image_feat"]
        assert np.abs(feat - exact).max() <= 2e-3, decode
        manifest = cache.manifest(snli_paths[decode])
        assert manifest["fingerprint"]["images"] == fingerprint_entry(decode)
        assert manifest["settings"]["image_decode"] == decode
    manifest = cache.manifest(snli_paths["exact"])
    assert "images" not in manifest["fingerprint"]  # as before the choice existed
    assert manifest["settings"]["image_decode"] == "exact"


def test_resuming_with_another_image_path_is_refused(tmp_path, toy_root, tiny_clip):
    """A cache made with one path never takes shards of another: one line, exit 2; the same
    path resumes, --force overwrites (toy PNGs: the gpu path's PIL fallback, end to end)."""
    name, checkpoint = tiny_clip
    root = tmp_path / "root"
    shutil.copytree(toy_root, root)
    args = [
        "extract",
        *("--teacher", name, "--checkpoint", str(checkpoint)),
        *("--dataset", "toy-vcr", "--protocol", "vcr", "--root", str(root), "--split", "vcr"),
        *("--out", str(tmp_path / "cache"), "--shard-size", "6", "--no-progress"),
    ]
    first = CliRunner().invoke(cli, args + ["--image-decode", "gpu"])
    assert first.exit_code == 0, first.output
    for other, flag in (("crop-first", ["--image-decode", "crop-first"]), ("exact", [])):
        again = CliRunner().invoke(cli, args + flag)
        assert again.exit_code == 2, again.output
        assert again.output.strip().splitlines() == [
            f"Error: --image-decode {other}: the cache at {tmp_path / 'cache'} was extracted "
            "with --image-decode gpu, whose pixels differ; pass --image-decode gpu to resume "
            "it, --force to overwrite it, or another --out"
        ]
    same = CliRunner().invoke(cli, args + ["--image-decode", "gpu"])
    assert same.exit_code == 0 and "(0 written, 2 resumed)" in same.output, same.output
    forced = CliRunner().invoke(cli, args + ["--image-decode", "crop-first", "--force"])
    assert forced.exit_code == 0 and "(2 written, 0 resumed)" in forced.output, forced.output


@pytest.mark.gpu
def test_the_cuda_path_matches_the_cpu_tensor_path(real_root):
    """nvjpeg + CUDA resize vs libjpeg-turbo + CPU resize on the real JPEGs: nvjpeg's IDCT and
    colour conversion and the float resize round differently; within 3 grey levels per pixel,
    mean |diff| <= 0.01 in normalised units."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    transform = vit_b16_transform()
    tensor = TensorTransform.of(transform, teacher="t")
    files = sorted(p.relative_to(real_root).as_posix() for p in real_root.rglob("*.jpg"))
    encoded = [read_encoded(real_root, f) for f in files]
    on_cpu = tensor(decode_on(encoded, "cpu", root=real_root, paths=files))
    on_cuda = tensor(decode_on(encoded, "cuda", root=real_root, paths=files)).cpu()
    diff = (on_cuda - on_cpu).abs()
    assert diff.max() <= grey_levels(transform, 3), float(diff.max())
    assert diff.mean() <= 0.01, float(diff.mean())


@pytest.mark.gpu
def test_extraction_on_cuda_with_the_gpu_path(real_root, tiny_clip, tmp_path, cache):
    """`--image-decode gpu` end to end on CUDA (nvjpeg in the main process, bytes from a
    worker) vs `exact` on CUDA: the same bf16 forward, image features of cosine >= 0.999."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    made = extract_paths(real_root, tiny_clip, tmp_path, "cuda", ("exact", "gpu"))
    exact, gpu = (torch.from_numpy(cache.shards(made[d])[0]["image_feat"]) for d in made)
    assert torch.nn.functional.cosine_similarity(exact, gpu).min() >= 0.999
    assert cache.manifest(made["gpu"])["fingerprint"]["images"]["decode"] == "gpu"
