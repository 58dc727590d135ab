"""A SIGKILLed `madcache extract` resumes to exactly the cache of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cache.reader import open_cache
from madcache.cli import cli

IMAGES = 12  # conftest.py: snli_root has 12 images x 3 hypotheses

# The real CLI in a child process, with each shard write followed by a pause so the parent can
# kill it reliably between shards (the kill itself is a plain external SIGKILL).
SLOW_CLI = """
import sys, time
import madcache.cache.writer as writer
original = writer.CacheWriter.write_shard
def slow(self, *args, **kwargs):
    original(self, *args, **kwargs)
    time.sleep(0.25)
writer.CacheWriter.write_shard = slow
from madcache.cli import main
sys.argv = ["madcache", *sys.argv[1:]]
main()
"""


def completed(out: Path) -> int:
    """Shards committed so far (one commit record each)."""
    return len(list((out / "commits").glob("*.json")))


def kill_after_first_shard(args: list[str], out: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300  # a deadline, not a speed goal (busy CI cores)
    while completed(out) < 1:
        if child.poll() is not None:
            raise AssertionError(f"extraction ended early: {child.stderr.read().decode()}")
        assert time.monotonic() < deadline, "no shard completed within 300 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return completed(out)


@pytest.mark.slow
@pytest.mark.parametrize("store_format", ["zarr", "hdf5"])
def test_killed_extraction_resumes_to_the_uninterrupted_cache(
    tmp_path, snli_root, tiny_clip, store_format, extract_args
):
    runner = CliRunner()
    reference = tmp_path / "reference"
    result = runner.invoke(
        cli, extract_args(snli_root, reference, tiny_clip, "--format", store_format)
    )
    assert result.exit_code == 0, result.output

    resumed = tmp_path / "resumed"
    args = extract_args(snli_root, resumed, tiny_clip, "--format", store_format)
    done = kill_after_first_shard(args, resumed)
    assert 1 <= done < IMAGES, done
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{IMAGES} ({IMAGES - done} written, {done} resumed)" in result.output

    expected, actual = open_cache(reference).arrays(), open_cache(resumed).arrays()
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (reference, resumed)]
    assert manifests[0]["extra"]["kmeans_centres"] == manifests[1]["extra"]["kmeans_centres"]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]
