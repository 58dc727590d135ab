"""The GPU tier (marked `gpu`, skipped without CUDA): bf16 training on CUDA, extraction on cuda vs
cpu, a bf16 MAD step vs fp32, a resume on the GPU, DDP on NCCL (2 GPUs) vs 1 process.

Each GPU test is a helper run with device "cuda". `test_the_gpu_helpers_run_on_the_cpu` runs the
same helpers with device "cpu" in the CPU suite, so a change of the loop's call signatures
(`StageLoss.forward(self, *, stage, micro, generator)`, `make_setup`, `train`) or of the extraction
API fails there, on every run, instead of rotting behind a skip on machines without a GPU (the
old spy here took `(setup, examples, targets, inputs)` long after the loop changed). Stand-ins
come from standins.py.

Tolerances (the GPU computes the same formulas with other rounding, docs/guarantees.md):
- extraction on cuda (bf16 autocast) vs cpu (fp32), cached as float16: every feature row's
  cosine similarity >= EXTRACT_MIN_COSINE;
- a bf16 MAD step's loss within BF16_LOSS_RTOL of the fp32 loss on the same weights and batch;
- a resume on the GPU vs an uninterrupted GPU run: losses within RESUME_RTOL and weights within
  RESUME_ATOL (CUDA's embedding backward adds with atomics, so bits may differ; on the CPU the
  same helper checks equality to the bit);
- DDP with 2 GPUs (NCCL, fp32 with TF32 matmuls) vs 1 process: losses within DDP_RTOL, weights
  within DDP_ATOL.
Both weight comparisons leave out the multiple-choice head's bias (`NOISE_ONLY`): its true
gradient is 0, and Adam turns float noise there into full-size steps (as in
tests/train/test_distributed.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from madcache.train import loop as train_mod
from madcache.train.loop import train

EXTRACT_MIN_COSINE = 0.995
BF16_LOSS_RTOL = 0.02
RESUME_RTOL, RESUME_ATOL = 1e-4, 1e-4
DDP_RTOL, DDP_ATOL = 1e-3, 1e-3
NOISE_ONLY = {"student.head.bias"}

CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
two_gpus_only = pytest.mark.skipif(
    not CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"
)


def on_device(setup, device):
    """The stand-in setup on `device` (the stand-in student's `prepare` leaves its inputs on the
    CPU, which only the training pipeline moves: no validation on CUDA here)."""
    setup.student.to(device)
    setup.projections.to(device)
    if device != "cpu":
        setup.eval_examples = []
    return setup


# ----------------------------------------------------------------------------- helpers


def spy_on_training(standins, tmp_path, monkeypatch, device):
    """MAD with an AF stage on `device`; what every `StageLoss` call saw: where its inputs and
    targets were, and the autocast state. Returns (metrics, seen, setup, weights before)."""
    seen = []
    real = train_mod.StageLoss.forward

    def spy(module, *, stage, micro, generator):
        kind = torch.device(device).type
        seen.append(
            (
                micro.inputs["ids"].device.type,
                micro.targets.image.device.type,
                torch.is_autocast_enabled(kind),
                torch.get_autocast_dtype(kind),
            )
        )
        return real(module, stage=stage, micro=micro, generator=generator)

    monkeypatch.setattr(train_mod.StageLoss, "forward", spy)
    setup = on_device(
        standins.make_setup(tmp_path, method="mad", device=device, chunk=4, epochs=2), device
    )
    before = setup.student.emb.weight.detach().clone()
    return train(setup), seen, setup, before


def bf16_and_fp32_losses(standins, tmp_path, device):
    """The first MAD (AF stage) step's loss in fp32 and in bf16 from the same initial weights
    and batch."""
    losses = {}
    for precision in ("fp32", "bf16"):
        setup = on_device(
            standins.make_setup(
                tmp_path / precision,
                method="mad",
                device=device,
                precision=precision,
                af_max_steps=1,
                max_steps=1,
                eval_split=None,
            ),
            device,
        )
        metrics = train(setup)
        assert metrics["training"]["precision"] == precision
        losses[precision] = metrics["history"][0]["loss"]
    return losses["fp32"], losses["bf16"]


def resumed_and_uninterrupted(standins, tmp_path, monkeypatch, device):
    """(uninterrupted, resumed) metrics and final checkpoint tensors of a MAD run on `device`
    that is interrupted at its 6th step and resumed."""
    options = dict(method="mad", af_epochs=1, chunk=4, device=device, checkpoint_every=4)
    full = train(on_device(standins.make_setup(tmp_path / "full", **options), device))
    real, calls = train_mod.StageLoss.forward, {"n": 0}

    def crash_at_sixth(module, *, stage, micro, generator):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(module, stage=stage, micro=micro, generator=generator)

    monkeypatch.setattr(train_mod.StageLoss, "forward", crash_at_sixth)
    with pytest.raises(KeyboardInterrupt):
        train(on_device(standins.make_setup(tmp_path / "cut", **options), device))
    monkeypatch.setattr(train_mod.StageLoss, "forward", real)
    resumed = train(
        on_device(standins.make_setup(tmp_path / "cut", resume=True, **options), device)
    )
    weights = [
        load_file(str(tmp_path / name / "run" / "checkpoint.safetensors"))
        for name in ("full", "cut")
    ]
    return (full, weights[0]), (resumed, weights[1])


def extract_features(
    root: Path, out: Path, clip: tuple[Path, Path], device: str, limit: int = 8
) -> dict[str, np.ndarray]:
    """The first `limit` VCR train examples of the demo world extracted with the tiny CLIP on
    `device`; the cached image, text and word features (float32)."""
    from madcache.cache.reader import open_cache
    from madcache.extraction import ExtractConfig, extract

    config, checkpoint = clip
    extract(
        ExtractConfig(
            dataset="vcr",
            root=root,
            split="train",
            device=device,
            limit=limit,
            teacher=f"openclip-config:{config}",
            checkpoint=checkpoint,
            out=out,
            progress=False,
        )
    )
    cache = open_cache(out)
    targets = cache.load_targets(cache.example_ids())
    return {
        "image": targets.image.astype(np.float32),
        "text": targets.text_eos.reshape(-1, targets.text_eos.shape[-1]).astype(np.float32),
        "words": targets.words.feat.astype(np.float32),
    }


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine similarity of matching rows. Rows that are zero (words cut by the
    context length) must be zero in both and are left out."""
    zero_a, zero_b = ~a.any(axis=-1), ~b.any(axis=-1)
    assert (zero_a == zero_b).all(), "zero rows differ"
    a, b = torch.from_numpy(a[~zero_a]), torch.from_numpy(b[~zero_b])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def tiny_clip(tmp_path: Path) -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "extraction_conftest_gpu", str(Path(__file__).parents[1] / "extraction" / "conftest.py")
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.save_tiny_clip(tmp_path / "clip")


# ----------------------------------------------------------------------------- GPU tests


@pytest.mark.gpu
@cuda_only
def test_bf16_training_on_cuda(standins, tmp_path, monkeypatch):
    metrics, seen, setup, before = spy_on_training(standins, tmp_path, monkeypatch, "cuda")
    assert metrics["training"]["precision"] == "bf16"
    assert torch.backends.cuda.matmul.allow_tf32
    assert seen and all(s == ("cuda", "cuda", True, torch.bfloat16) for s in seen)
    assert all(np.isfinite(h["loss"]) for h in metrics["history"])
    assert not torch.equal(before, setup.student.emb.weight.detach())


@pytest.mark.gpu
@cuda_only
def test_fp32_on_cuda_when_asked(standins, tmp_path):
    setup = on_device(
        standins.make_setup(tmp_path, method="md", device="cuda", precision="fp32", epochs=1),
        "cuda",
    )
    assert train(setup)["training"]["precision"] == "fp32"


@pytest.mark.gpu
@cuda_only
def test_auto_device_is_cuda_and_recorded(standins, tmp_path):
    setup = on_device(standins.make_setup(tmp_path, method="md", epochs=1), "cuda")
    train(setup)
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert inputs["device"] == "cuda" and setup.config.device == "cuda"


@pytest.mark.gpu
@cuda_only
def test_bf16_mad_step_matches_fp32(standins, tmp_path):
    fp32, bf16 = bf16_and_fp32_losses(standins, tmp_path, "cuda")
    assert bf16 == pytest.approx(fp32, rel=BF16_LOSS_RTOL)


@pytest.mark.gpu
@cuda_only
def test_resume_on_cuda_equals_uninterrupted(standins, tmp_path, monkeypatch):
    (full, a), (resumed, b) = resumed_and_uninterrupted(standins, tmp_path, monkeypatch, "cuda")
    for x, y in zip(full["history"], resumed["history"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=RESUME_RTOL)
    assert a.keys() == b.keys()
    for key in a.keys() - NOISE_ONLY:
        assert torch.allclose(a[key], b[key], atol=RESUME_ATOL), key


@pytest.mark.gpu
@cuda_only
def test_extraction_on_cuda_matches_cpu(demo_root, tmp_path):
    clip = tiny_clip(tmp_path)
    cpu = extract_features(demo_root / "vcr", tmp_path / "cpu", clip, "cpu")
    cuda = extract_features(demo_root / "vcr", tmp_path / "cuda", clip, "cuda")
    for name in cpu:
        assert cpu[name].shape == cuda[name].shape
        assert min_cosine(cpu[name], cuda[name]) >= EXTRACT_MIN_COSINE, name


@pytest.mark.gpu
@two_gpus_only
def test_ddp_on_nccl_two_gpus_equals_one_process(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    options = dict(
        method="md-ts", device="cuda", precision="fp32", eval_split=None, dropout=0.0, epochs=2
    )
    for name, nproc in (("one", 1), ("two", 2)):
        out = tmp_path / name
        out.mkdir()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(nproc),
                str(worker),
                str(out),
                json.dumps(options),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-4000:]
    one, two = (
        json.loads((tmp_path / n / "rank0.json").read_text())["metrics"] for n in ("one", "two")
    )
    assert (one["training"]["world_size"], two["training"]["world_size"]) == (1, 2)
    for x, y in zip(one["history"], two["history"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=DDP_RTOL)
    a, b = (
        load_file(str(tmp_path / n / "work" / "run" / "checkpoint.safetensors"))
        for n in ("one", "two")
    )
    for key in {k for k in a if k.startswith("student.")} - NOISE_ONLY:
        assert torch.allclose(a[key], b[key], atol=DDP_ATOL), key


# ----------------------------------------------------------------------------- the CPU guard


def test_the_gpu_helpers_run_on_the_cpu(standins, tmp_path, monkeypatch, demo_root):
    """Every helper of the GPU tests above, with device "cpu" (see the module docstring): the
    spy's signature is the loop's, the bf16 and resume helpers run, the extraction helper
    reads what it wrote."""
    import inspect

    params = inspect.signature(train_mod.StageLoss.forward).parameters
    assert [(n, p.kind.name) for n, p in params.items()] == [
        ("self", "POSITIONAL_OR_KEYWORD"),
        ("stage", "KEYWORD_ONLY"),
        ("micro", "KEYWORD_ONLY"),
        ("generator", "KEYWORD_ONLY"),
    ]

    metrics, seen, _, _ = spy_on_training(standins, tmp_path / "spy", monkeypatch, "cpu")
    assert metrics["training"]["precision"] == "fp32"
    assert seen and all(s[:3] == ("cpu", "cpu", False) for s in seen)
    monkeypatch.undo()

    fp32, bf16 = bf16_and_fp32_losses(standins, tmp_path / "bf16", "cpu")  # CPU autocast
    assert bf16 == pytest.approx(fp32, rel=BF16_LOSS_RTOL) and bf16 != fp32

    (full, a), (resumed, b) = resumed_and_uninterrupted(
        standins, tmp_path / "resume", monkeypatch, "cpu"
    )
    assert resumed["history"] == full["history"] and all(torch.equal(a[k], b[k]) for k in a)

    features = extract_features(
        demo_root / "vcr", tmp_path / "cache", tiny_clip(tmp_path), "cpu", limit=2
    )
    for name, values in features.items():
        assert min_cosine(values, values) >= EXTRACT_MIN_COSINE, name
