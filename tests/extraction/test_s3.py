"""End to end on an S3-compatible server (moto on localhost): extract -> kill a writer before a
commit -> resume -> verify -> regions -> train -> eval -> zero-shot, all on s3://, the arrays
equal to the same cache extracted on disk."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cli import cli

TESTS = Path(__file__).resolve().parents[1]


def _faults():
    """tests/faults/conftest.py: the fault-hooked `madcache` child process and its helpers."""
    name = "s3_faults_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, str(TESTS / "faults/conftest.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_extract_kill_resume_verify_train_eval_all_on_s3(tmp_path, s3_bucket, tiny_clip):
    from madcache.cache.commits import read_commits
    from madcache.cache.location import open_location
    from madcache.cache.reader import open_cache
    from madcache.core.errors import CacheError
    from madcache.evaluation.zeroshot import run_zero_shot

    faults = _faults()
    root = faults.extraction_helpers.write_snli_split(tmp_path / "snli")
    disk, url = tmp_path / "disk", f"{s3_bucket}/snli/train"
    invoke(*faults.extract_args(root, disk, tiny_clip))

    # a writer killed after committing shard 0; the next one killed with shard 1's arrays and
    # index part stored, its commit record not
    for point, committed in (("after-shard", [0]), ("before-commit", [0])):
        marker = tmp_path / f"reached-{point}"
        child = faults.start_cli(
            faults.extract_args(root, url, tiny_clip), point=point, marker=marker
        )
        faults.wait_for(marker, child)
        faults.kill(child)
        store = open_location(url).store
        assert sorted(read_commits(store)) == committed
    assert store.exists("shard-00001.zarr")  # half-written: arrays, no record
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(url)

    output = invoke(*faults.extract_args(root, url, tiny_clip))  # resume
    assert "12 (11 written, 1 resumed)" in output, output  # one image per shard
    invoke("cache", "verify", url)  # exit 0: every object checked
    local, remote = open_cache(disk), open_cache(url)
    assert remote.manifest["fingerprint_digest"] == local.manifest["fingerprint_digest"]
    assert remote.manifest["extra"] == local.manifest["extra"]  # k-means centres
    expected = local.arrays()
    for name, array in remote.arrays().items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert set(remote.arrays()) == set(expected)

    regions = f"{s3_bucket}/snli/regions"
    invoke(
        "regions",
        "--dataset",
        "snli-ve",
        "--root",
        root,
        "--split",
        "train",
        "--extractor",
        "boxcrop",
        "--max-regions",
        "4",
        "--out",
        regions,
        "--no-progress",
    )
    run = tmp_path / "run"
    invoke(
        "train",
        "--dataset",
        "snli-ve",
        "--root",
        root,
        "--split",
        "train",
        "--eval-split",
        "train",
        "--cache",
        url,
        "--regions",
        regions,
        "--method",
        "mad",
        "--max-steps",
        "2",
        "--batch-size",
        "6",
        "--out",
        run,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and "train" in metrics["eval"], metrics.keys()
    scored = invoke("eval", "--run", run, "--split", "train", "--regions", regions)
    assert scored.startswith("train: accuracy"), scored
    assert run_zero_shot(url, root=root)["protocols"] == run_zero_shot(disk, root=root)["protocols"]
