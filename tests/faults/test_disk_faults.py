"""Writes the disk refuses (issue 31.8), with the kernel refusing them: each command runs in a
child process under `RLIMIT_FSIZE` (`ulimit -f`), so every write past a few bytes fails with
EFBIG at the lowest layer, whatever library writes it (a full disk, ENOSPC, fails the same
writes; the suite cannot mount a tiny tmpfs). Each command says in one line which path it could
not write and what to do, exits 2, and leaves no partial output file behind."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys

import pytest

LIMIT = 64  # bytes: tempfile's probe and tiny files pass, every real output fails


def run_limited(args: list, faults, cwd) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "madcache", *map(str, args)],
        cwd=cwd,
        env=faults.child_env(PYTHONDONTWRITEBYTECODE="1"),
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, train_world, faults):
    out = tmp_path_factory.mktemp("disk") / "runs" / "run"
    assert faults.invoke(*faults.train_args(train_world, out)).exit_code == 0
    return out


def _unfinished(tmp_path, train_world):
    """The cache with every shard committed but not finished (manifest `writing`, no index)."""
    cache = tmp_path / "unfinished"
    shutil.copytree(train_world.cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["state"] = "writing"
    manifest.pop("shards", None)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    (cache / "index.parquet").unlink()
    return cache


@pytest.mark.parametrize(
    "command",
    [
        "cache finish",
        "report",
        *(
            pytest.param(c, marks=pytest.mark.slow)  # these held before; the two above did not
            for c in ("regions", "data lowshot", "demo data", "predict")
        ),
    ],
)
def test_a_refused_write_names_the_path_and_leaves_no_partial_file(
    tmp_path, train_world, trained_run, faults, command
):
    snli = ["--dataset", "snli-ve", "--root", train_world.root, "--split", "train"]
    args, named, left = {
        "cache finish": lambda: (
            ["cache", "finish", _unfinished(tmp_path, train_world)],
            "unfinished",
            None,
        ),
        "report": lambda: (
            ["report", trained_run.parent, "--out", "rep"],
            "rep",
            tmp_path / "rep" / "report.md",
        ),
        "regions": lambda: (
            ["regions", *snli, "--out", "regions", "--no-progress"],
            "regions",
            None,
        ),
        "data lowshot": lambda: (
            ["data", "lowshot", *snli, "--per-category", "1", "--seed", "0", "--out", "split.json"],
            "split.json",
            tmp_path / "split.json",
        ),
        "demo data": lambda: (["demo", "data", "--size", "small", "--out", "world"], "world", None),
        "predict": lambda: (
            ["predict", "--run", trained_run, "--split", "train", "--out", "pred.jsonl"],
            "pred.jsonl",
            tmp_path / "pred.jsonl",
        ),
    }[command]()
    result = run_limited(args, faults, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert named in lines[0] and "file larger than allowed" in lines[0]
    assert "rerun" in lines[0]
    assert left is None or not left.exists()  # never a 0-byte or half file
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob(".*.tmp-*"))
