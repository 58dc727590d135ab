"""Many processes, one cache: rank resolution, and torchrun (gloo, CPU) or `--rank/--world-size`
plain processes giving a cache equal to one process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cache.reader import open_cache
from madcache.cache.verify import verify_cache
from madcache.cli import cli
from madcache.extraction import ExtractConfig, extract
from madcache.extraction.distributed import Ranks, rank_device, resolve_ranks

REPO = Path(__file__).resolve().parents[2]


def test_rank_sources_in_order():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5"}
    assert resolve_ranks(env={}) == Ranks()
    assert resolve_ranks(env=torchrun) == Ranks(3, 4, 1, "torchrun")
    assert resolve_ranks(env=slurm) == Ranks(2, 4, 0, "slurm-array")
    assert resolve_ranks(env={**slurm, **torchrun}).launcher == "torchrun"
    assert resolve_ranks(1, 2, env={**slurm, **torchrun}) == Ranks(1, 2, 1, "flags")
    assert [s for s in range(7) if Ranks(1, 3).owns(s)] == [1, 4]


def test_each_rank_uses_its_local_gpu():
    assert rank_device("cuda", Ranks(3, 4, 1, "torchrun")) == "cuda:1"
    assert rank_device("cuda:0", Ranks(3, 4, 1, "torchrun")) == "cuda:0"
    assert rank_device("cpu", Ranks(3, 4, 1, "torchrun")) == "cpu"
    assert rank_device("cuda", Ranks()) == "cuda"


@pytest.fixture(scope="module")
def single(tmp_path_factory, snli_root, tiny_clip, extract_args) -> Path:
    out = tmp_path_factory.mktemp("single") / "cache"
    result = CliRunner().invoke(cli, extract_args(snli_root, out, tiny_clip))
    assert result.exit_code == 0, result.output
    return out


def env() -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))
    }
    return {**clean, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def assert_equal_caches(actual: Path, expected: Path, world_size: int) -> None:
    assert verify_cache(actual) == []
    a, e = open_cache(actual), open_cache(expected)
    for name, array in e.arrays().items():
        np.testing.assert_array_equal(a.arrays()[name], array, err_msg=name)
    assert a.manifest["extra"]["kmeans_centres"] == e.manifest["extra"]["kmeans_centres"]
    writers = [
        (s["index"], s["writer"]["rank"], s["writer"]["world_size"]) for s in a.manifest["shards"]
    ]
    assert writers == [(i, i % world_size, world_size) for i in range(len(writers))]
    assert all(
        s["writer"]["host"] and s["writer"]["precision"]["compute_dtype"] == "float32"
        for s in a.manifest["shards"]
    )


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path, snli_root, tiny_clip, single, extract_args):
    out = tmp_path / "c"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "madcache",
            *extract_args(snli_root, out, tiny_clip),
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "by rank 0 of 2" in run.stdout and "by rank 1 of 2" in run.stdout
    assert "cache finish" in run.stdout  # rank 1 says rank 0 finishes
    assert open_cache(out).manifest["state"] == "complete"
    assert_equal_caches(out, single, 2)


@pytest.mark.slow
def test_two_plain_processes_equal_one_process(
    tmp_path, snli_root, tiny_clip, single, extract_args
):
    out = tmp_path / "c"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "madcache",
                "--debug",
                *extract_args(snli_root, out, tiny_clip, "--rank", str(r), "--world-size", "2"),
            ],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
    assert_equal_caches(out, single, 2)
    again = CliRunner().invoke(cli, ["cache", "finish", str(out)])  # idempotent
    assert again.exit_code == 0 and "written by 2 rank(s) on" in again.output
    assert_equal_caches(out, single, 2)


def test_slurm_array_tasks_split_the_shards(tmp_path, snli_root, tiny_clip, single, monkeypatch):
    """Array tasks 1..3 (`--array=1-3`): the task minus SLURM_ARRAY_TASK_MIN is the rank."""
    name, checkpoint = tiny_clip
    out = tmp_path / "c"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    for task in ("3", "1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        summary = extract(
            ExtractConfig(
                dataset="snli-ve",
                root=snli_root,
                split="train",
                teacher=name,
                checkpoint=checkpoint,
                out=out,
                shard_size=3,
                batch_size=4,
                forward_batch=2,
                dtype="float32",
                progress=False,
            )
        )
        assert (summary["rank"], summary["shards_written"]) == (int(task) - 1, 4)
    assert summary["finished"]
    assert_equal_caches(out, single, 3)
