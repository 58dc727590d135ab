"""Benchmarks that must not rot between their real runs: benchmarks/gpu_check.sh in its dry mode
(tiny shapes on the CPU: every part of the GPU check still runs), bench_preprocess.py in its quick
mode on the real VCR sample and bench_scale.py at a tiny fraction of the real split sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_dry():
    done = run_in_repo(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry"])
    assert "pytest -m gpu" not in done.stdout
    for row in (
        "extract / teacher forward",
        "image tower alone",
        "extract --image-decode gpu",
        "image path CPU side",
        "image path gpu, device side",
        "cached MAD / baseline step, bf16",
        "MAD step fp32 / bf16",
        "peak GPU memory",
    ):
        assert row in done.stdout, row
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["dry"] and figures["extraction"]["examples"] == 8
    assert figures["steps"]["mad_over_baseline_bf16"] > 0
    paths = figures["image_paths"]
    assert all(paths[f"cpu_side_{p}_images_per_s"] > 0 for p in ("exact", "tensor", "gpu"))
    assert paths["device_side_images_per_s"] > 0
    assert paths["device_vs_cpu_pixels_max_grey_levels"] == 0  # dry: the device is the CPU


@pytest.mark.real
def test_preprocess_bench_runs_quick(real_root):
    """benchmarks/bench_preprocess.py --quick on the real VCR sample: both variants measured,
    the same steps, positive costs, the default worker count of a 16-core CUDA node, and each
    image path's CPU cost and projection against the GPU's rate."""
    env = {**os.environ, "MADCACHE_REAL_FIXTURES": str(real_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_preprocess.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["quick"] and figures["examples"] == 24 and figures["texts"] == 96
    before, after = figures["before"], figures["after"]
    assert (
        set(before["per_example_ms"])
        == set(after["per_example_ms"])
        == {"read", "decode", "transform", "bpe", "yake", "preprocessor"}
    )
    assert all(
        v > 0 for v in [*before["per_example_ms"].values(), *after["per_example_ms"].values()]
    )
    assert (
        before["default_workers_16_core_cuda_node"],
        after["default_workers_16_core_cuda_node"],
    ) == (0, 15)
    paths = figures["image_paths"]
    assert set(paths) == {"exact", "crop-first", "tensor", "gpu"}
    assert set(paths["gpu"]["per_example_ms"]) == {"read", "bpe", "yake", "read_bytes"}
    assert paths["exact"]["per_example_ms"] == {
        k: after["per_example_ms"][k] for k in ("read", "bpe", "yake", "decode", "transform")
    }
    for row in paths.values():
        assert row["cpu_ms_per_example"] > 0 and row["preprocessor_ms"] > 0
        assert row["over_gpu_rate"] == pytest.approx(
            row["projected_examples_per_s_16_cores"]
            / figures["clip_retrieval_a100_examples_per_s"],
            abs=0.01,
        )
    assert "unmeasured" in paths["gpu"]["device_side"]
    assert "--image-decode gpu" in done.stdout


@pytest.mark.slow
def test_bench_scale_runs_tiny():
    """benchmarks/bench_scale.py at 0.5% of SNLI-VE's size: the real readers, setup and caches
    (zarr and hdf5 agree), every figure of the table printed."""
    done, lines = run_bench(
        "bench_scale.py",
        *("--fraction", "0.005", "--datasets", "snli-ve", "--measures", "lowshot,load"),
        *("--shots", "8"),
    )
    loads = [r for r in lines if r.get("measure") == "load"]
    assert [r["examples"] for r in loads] == [264, 2647]
    assert all(r["zarr_checksum"] == r["hdf5_checksum"] and r["zarr_rows_per_s"] > 0 for r in loads)
    lowshot = [r for r in lines if r.get("measure") == "lowshot"]
    assert len(lowshot) == 2 and all(
        r["rows"] > 0 and r["bytes_used"] > 0 and r["mad"]["bytes_used"] > r["bytes_used"]
        for r in lowshot
    )
    for row in (
        "low-shot MD run: peak RSS (MB)",
        "low-shot MAD task load: bytes read / used",
        "random 3% load, hdf5: rows/s",
    ):
        assert row in done.stdout, row


@pytest.mark.slow
def test_bench_sparse_runs_tiny():
    """benchmarks/bench_sparse.py at 0.2% of VCR's size: a low-shot load with the run's
    verification counted, from caches this checkout writes in both formats, which agree."""
    _, lines = run_bench(
        "bench_sparse.py", *("--fraction", "0.002", "--shots", "2", "--formats", "zarr,hdf5")
    )
    loads = {r["format"]: r for r in lines if r.get("measure") == "load"}
    assert loads["zarr"]["zarr_checksum"] == loads["hdf5"]["hdf5_checksum"]
    lowshot = [r for r in lines if r.get("measure") == "lowshot"]
    assert len(lowshot) == 2
    for row in lowshot:
        for method in ("md", "mad"):
            figures = row[method]
            assert figures["rows"] > 0 and figures["bytes_read"] >= figures["bytes_used"] > 0
            assert figures["bytes_read"] == figures["check_bytes"] + figures["load_bytes"]


def run_bench(script: str, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`benchmarks/<script> args` on one thread with this checkout first on the path: the
    finished process (exit 0 asserted) and the JSON rows it printed."""
    done = run_in_repo([sys.executable, str(REPO / "benchmarks" / script), *args])
    return done, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def run_in_repo(command: list[str]) -> subprocess.CompletedProcess:
    """`command` from the repository root on one thread, this checkout first on the path and
    `PYTHON` naming this interpreter (for shell scripts); exit 0 asserted."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
