"""Shared fixtures: the real-data folder beside the checkout, the generated demo worlds, fixed
seeds, one torch thread."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("MADCACHE_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def real_root() -> Path:
    """`../shared/fixtures/real`; tests that need it skip with a reason where it is absent."""
    if not REAL.is_dir():
        pytest.skip(
            f"real dataset samples not found at {REAL} (only present beside the "
            "project's own checkout; set MADCACHE_REAL_FIXTURES to point at them)"
        )
    return REAL


# --- the demo world (madcache.demo.world, docs/demo-world.md) -------------------------------


@pytest.fixture(scope="session")
def demo_worlds(tmp_path_factory) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """`demo_worlds(size="small", seed=0) -> (root, summary)`: a demo world generated once per
    session for each size and seed, with the summary its generation returned. Tests share it:
    they read it and write their outputs elsewhere."""
    from madcache.demo.world import generate_demo_world

    made: dict[tuple[str, int], tuple[Path, dict[str, Any]]] = {}

    def world(size: str = "small", seed: int = 0) -> tuple[Path, dict[str, Any]]:
        if (size, seed) not in made:
            root = tmp_path_factory.mktemp(f"demo-world-{size}-{seed}")
            made[size, seed] = root, generate_demo_world(root, size=size, seed=seed)
        return made[size, seed]

    return world


@pytest.fixture(scope="session")
def demo_root(demo_worlds) -> Path:
    """The root of the small demo world (seed 0) that most tests read."""
    return demo_worlds()[0]


# --- a real S3-compatible server on localhost (moto's standalone server) ----------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    """`http://127.0.0.1:PORT` of a moto S3 server for this session (skips without moto or the
    obstore client)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (make test does)")
    pytest.importorskip("obstore", reason="obstore (madcache[s3]) is not installed")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "madcache-test",
    "AWS_SECRET_ACCESS_KEY": "madcache-test",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, request) -> str:
    """`s3://BUCKET`: a fresh bucket on the session's server, with the AWS environment set
    (child processes inherit it)."""
    import re

    import boto3

    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="madcache-test",
        aws_secret_access_key="madcache-test",
    )
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


# --- a training run cut by an interruption and resumed ---------------------------------------


@pytest.fixture
def cut_and_resume(monkeypatch) -> Callable[..., tuple[dict, dict]]:
    """`cut_and_resume(make, at=N) -> (uninterrupted metrics, resumed metrics)`: trains
    `make("full")`, then `make("cut")` interrupted (KeyboardInterrupt) at its N-th loss step,
    then `make("cut", resume=True)`. `make(name, **extra)` returns a `TrainConfig`."""
    from madcache.train import loop

    def run(make: Callable[..., Any], *, at: int) -> tuple[dict, dict]:
        full = loop.run_training(make("full"))
        real, calls = loop.StageLoss.forward, [0]

        def interrupted(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(loop.StageLoss, "forward", interrupted)
        with pytest.raises(KeyboardInterrupt):
            loop.run_training(make("cut"))
        monkeypatch.setattr(loop.StageLoss, "forward", real)
        return full, loop.run_training(make("cut", resume=True))

    return run


def same_tensors(a: Path, b: Path) -> bool:
    """Two safetensors files hold the same names and bit-identical tensors."""
    import torch
    from safetensors.torch import load_file

    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="session")
def tensors_equal() -> Callable[[Path, Path], bool]:
    return same_tensors


# --- what a training run on the demo VCR reads ------------------------------------------------


def build_vcr_training_inputs(base: Path, root: Path) -> None:
    """Under `base`: `cache/` (the VCR training split at `root`, extracted with a tiny CLIP),
    `regions-train/` and `regions-val/` (boxcrop, 4 regions) and `split.json` (k = 2, seed 0,
    of cached examples)."""
    import importlib.util

    from madcache.cache.reader import open_cache
    from madcache.data import read_examples
    from madcache.data.lowshot import sample_per_category
    from madcache.extraction import ExtractConfig, extract
    from madcache.students.regions import build_region_store

    spec = importlib.util.spec_from_file_location(
        "extraction_conftest", str(Path(__file__).parent / "extraction" / "conftest.py")
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    config, checkpoint = helpers.save_tiny_clip(base / "clip")
    extract(
        ExtractConfig(
            dataset="vcr",
            root=root,
            split="train",
            teacher=f"openclip-config:{config}",
            checkpoint=checkpoint,
            out=base / "cache",
            progress=False,
            shard_size=64,
        )
    )
    for split in ("train", "val"):
        build_region_store(
            dataset="vcr",
            root=root,
            split=split,
            extractor="boxcrop",
            out=base / f"regions-{split}",
            max_regions=4,
            progress=False,
        )
    cached = set(open_cache(base / "cache").example_ids())
    examples = [e for e in read_examples("vcr", root, "train").examples if e.id in cached]
    sample_per_category(examples, k=2, seed=0).save(base / "split.json")


@pytest.fixture(scope="session")
def vcr_training_inputs() -> Callable[[Path, Path], None]:
    return build_vcr_training_inputs
