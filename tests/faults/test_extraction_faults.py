"""Extraction under faults: ranks killed mid-shard, the same rank started twice, run-time knobs
changed between runs, nonsense rank options, precisions mixed, defaults spelled out
(issue 12 items 7 and 8, issue 14).

The reference is one uninterrupted single-process extraction of the same split; every faulty
run must end in a cache whose arrays equal it bit for bit (float32 storage) and that verifies."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cache.reader import open_cache
from madcache.cache.verify import verify_cache
from madcache.cli import cli
from madcache.core.errors import CacheError, FingerprintMismatchError
from madcache.extraction import ExtractConfig, extract


def config(snli_root, tiny_clip, out, **options) -> ExtractConfig:
    name, checkpoint = tiny_clip
    values = dict(
        dataset="snli-ve",
        root=snli_root,
        split="train",
        teacher=name,
        checkpoint=checkpoint,
        out=out,
        shard_size=3,
        batch_size=2,
        forward_batch=2,
        dtype="float32",
        progress=False,
    )
    return ExtractConfig(**{**values, **options})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, snli_root, tiny_clip):
    out = tmp_path_factory.mktemp("reference") / "cache"
    extract(config(snli_root, tiny_clip, out))
    return out


def assert_same_cache(actual, expected) -> None:
    assert verify_cache(actual) == []
    a, e = open_cache(actual), open_cache(expected)
    arrays_a, arrays_e = a.arrays(), e.arrays()
    assert sorted(arrays_a) == sorted(arrays_e)
    for name in arrays_e:
        np.testing.assert_array_equal(arrays_a[name], arrays_e[name], err_msg=name)
    assert a.manifest["extra"] == e.manifest["extra"]
    assert a.manifest["fingerprint"] == e.manifest["fingerprint"]


# ----------------------------------------------------------------------------- run-time knobs


def test_batch_size_never_changes_the_values(tmp_path, snli_root, tiny_clip, reference):
    """Issue 12 item 7: the forward runs in fixed micro-batches, so --batch-size 1, 3 or 64
    (and a resume that changes it half way) give the same bits."""
    for batch_size in (1, 3, 64):
        out = tmp_path / f"b{batch_size}"
        extract(config(snli_root, tiny_clip, out, batch_size=batch_size))
        assert_same_cache(out, reference)
    mixed = tmp_path / "mixed"
    extract(config(snli_root, tiny_clip, mixed, batch_size=5, rank=0, world_size=2))
    extract(config(snli_root, tiny_clip, mixed, batch_size=1))
    assert_same_cache(mixed, reference)


def test_forward_batch_is_in_the_fingerprint(tmp_path, snli_root, tiny_clip):
    out = tmp_path / "c"
    extract(config(snli_root, tiny_clip, out, rank=0, world_size=2))
    with pytest.raises(
        FingerprintMismatchError, match=r"fingerprint\.forward\.micro_batch: 2 != 4"
    ):
        extract(config(snli_root, tiny_clip, out, forward_batch=4))


def test_a_default_reader_option_spelled_out_is_not_a_difference(tmp_path):
    """Issue 12 item 8: `renderer=tag` (VCR's default) given or not, `check_files` as text or
    bool: the same resolved options, so the same fingerprint, and an old cache that recorded
    the spelling is still accepted."""
    from madcache.cache.fingerprint import dataset_fingerprint
    from madcache.cache.reader import Cache

    record = {
        "movie": "m",
        "objects": ["person"],
        "img_fn": "m/a.jpg",
        "metadata_fn": "m/a.json",
        "question": ["Why", "?"],
        "answer_choices": [["a"], ["b"], ["c"], ["d"]],
        "rationale_choices": [["a"], ["b"], ["c"], ["d"]],
        "answer_label": 1,
        "rationale_label": 3,
        "img_id": "val-0",
        "annot_id": "val-1",
    }
    (tmp_path / "val.jsonl").write_text(json.dumps(record) + "\n")
    plain = dataset_fingerprint("vcr", tmp_path, "val", {})
    spelled = dataset_fingerprint(
        "vcr", tmp_path, "val", {"renderer": "tag", "check_files": "false", "modes": "qa,qar"}
    )
    assert plain == spelled and plain["read_options"]["renderer"] == "tag"
    assert dataset_fingerprint("vcr", tmp_path, "val", {"renderer": "name"}) != plain
    old_cache = Cache(
        tmp_path, {"fingerprint": {"dataset": {**plain, "read_options": {"renderer": "tag"}}}}, None
    )
    old_cache.check_compatible({"dataset": plain})
    with pytest.raises(FingerprintMismatchError, match="read_options.renderer: 'name' != 'tag'"):
        old_cache.check_compatible(
            {"dataset": dataset_fingerprint("vcr", tmp_path, "val", {"renderer": "name"})}
        )


# ----------------------------------------------------------------------------- ranks


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "1"], "give --rank and --world-size together"),
        (["--rank", "2", "--world-size", "2"], "rank 2 is outside 0..1"),
        (
            ["--rank", "0", "--world-size", "2", "--force"],
            "--force with --world-size > 1 needs torchrun",
        ),
    ],
)
def test_nonsense_rank_options_are_one_line_errors(
    tmp_path, snli_root, tiny_clip, faults, args, message
):
    result = CliRunner().invoke(
        cli, faults.extract_args(snli_root, tmp_path / "c", tiny_clip, *args)
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_slurm_array_rank_outside_the_array_is_refused(tmp_path, snli_root, tiny_clip, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    with pytest.raises(
        Exception,
        match=r"SLURM_ARRAY_TASK_ID: rank 4 is outside 0..3.*"
        r"--array=0-3",
    ):
        extract(config(snli_root, tiny_clip, tmp_path / "c"))


def test_a_rank_on_another_precision_is_refused(tmp_path, snli_root, tiny_clip, monkeypatch):
    """Rank 0 ran on CPU (float32); rank 1 arrives on a GPU under bf16 autocast: refused before
    it writes anything, naming both precisions."""
    import madcache.extraction.run as run

    out = tmp_path / "c"
    extract(config(snli_root, tiny_clip, out, rank=0, world_size=2))
    monkeypatch.setattr(
        run,
        "forward_precision",
        lambda device: {"device": "cuda", "compute_dtype": "bfloat16", "device_name": "test GPU"},
    )
    with pytest.raises(
        CacheError,
        match=r"another precision \(cpu/float32, shards 0, 2, 4, 6, "
        r"8 \.\.\.\) than this run \(cuda/bfloat16\)",
    ):
        extract(config(snli_root, tiny_clip, out, rank=1, world_size=2))
    assert len(list((out / "commits").iterdir())) == 6


@pytest.mark.slow
def test_a_rank_killed_mid_shard_resumes_to_the_same_cache(
    tmp_path, snli_root, tiny_clip, reference, faults
):
    """Two ranks as plain processes; rank 1 is SIGKILLed with a shard's arrays in place but its
    commit record not written. Rank 0 finishes its shards (the cache stays incomplete), rank 1
    is rerun, the last rank finishes the cache: identical to one uninterrupted process."""
    out, marker = tmp_path / "c", tmp_path / "reached"

    def args(rank: int) -> list[str]:
        return faults.extract_args(
            snli_root, out, tiny_clip, "--rank", str(rank), "--world-size", "2"
        )

    victim = faults.start_cli(args(1), point="before-commit", marker=marker)
    survivor = faults.start_cli(args(0))
    faults.wait_for(marker, victim)
    faults.kill(victim)
    assert "rank 0 of 2 done" in faults.finish(survivor)
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(out)
    rerun = faults.finish(faults.start_cli(args(1)))
    assert "(6 written, 0 resumed by rank 1 of 2)" in rerun
    assert_same_cache(out, reference)


@pytest.mark.slow
def test_the_same_rank_started_twice_splits_the_work_and_corrupts_nothing(
    tmp_path, snli_root, tiny_clip, reference, faults
):
    """Two processes both started as the only rank. The first is held just before committing
    its first shard (its claim held) until the second has committed a shard: the second skips
    the claimed shard, and together they write every shard exactly once (no shard twice, none
    lost); the cache equals the reference."""
    out, held, go = tmp_path / "c", tmp_path / "held", tmp_path / "go"
    args = faults.extract_args(snli_root, out, tiny_clip)
    first = faults.start_cli(args, point="before-commit", marker=held, go=go)
    faults.wait_for(held, first)
    second = faults.start_cli(args)
    faults.wait_for_commits(out, 1, second)
    go.touch()
    outputs = [faults.finish(child) for child in (first, second)]
    written = [int(o.split("shards")[1].split("(")[1].split(" written")[0]) for o in outputs]
    assert sum(written) == faults.snli_images and min(written) > 0, outputs
    pids = {e["writer"]["pid"] for e in open_cache(out).manifest["shards"]}
    assert len(pids) == 2
    assert_same_cache(out, reference)


def test_resume_after_changing_the_world_size(tmp_path, snli_root, tiny_clip, reference):
    """Rank 1 of 3 ran; then the job is restarted with 2 ranks: the shards are the unit, so the
    2 ranks do what is left and the cache equals the reference."""
    out = tmp_path / "c"
    first = extract(config(snli_root, tiny_clip, out, rank=1, world_size=3))
    assert first["shards_written"] == 4 and not first["finished"]
    zero = extract(config(snli_root, tiny_clip, out, rank=0, world_size=2))
    one = extract(config(snli_root, tiny_clip, out, rank=1, world_size=2))
    assert (zero["shards_written"], zero["shards_resumed"]) == (4, 2)
    assert (one["shards_written"], one["shards_resumed"]) == (4, 2)
    assert not zero["finished"] and one["finished"]
    manifest = open_cache(out).manifest
    assert {(e["writer"]["rank"], e["writer"]["world_size"]) for e in manifest["shards"]} == {
        (1, 3),
        (0, 2),
        (1, 2),
    }
    info = CliRunner().invoke(cli, ["cache", "info", str(out)]).output
    assert "rank 1/3 on" in info and ": 4 shard(s)" in info and "cpu/float32" in info
    assert_same_cache(out, reference)


# ----------------------------------------------------------------------------- disks that refuse


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_refused_shard_write_is_one_line_and_the_cache_resumes(
    tmp_path, snli_root, tiny_clip, monkeypatch, reference, code
):
    """Simulated at the writer seam (`CacheWriter.write_shard`), in process: a real full disk
    needs a tmpfs this suite cannot mount. The third shard fails; the error names the cache and
    says it is resumable, and the rerun ends in the reference cache."""
    from madcache.cache.writer import CacheWriter

    real, calls = CacheWriter.write_shard, []

    def refusing(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError(code, os.strerror(code))
        return real(self, *args, **kwargs)

    out = tmp_path / "cache"
    monkeypatch.setattr(CacheWriter, "write_shard", refusing)
    with pytest.raises(CacheError, match=f"cannot write {out}: .*the cache is resumable"):
        extract(config(snli_root, tiny_clip, out))
    monkeypatch.setattr(CacheWriter, "write_shard", real)
    extract(config(snli_root, tiny_clip, out))
    assert_same_cache(out, reference)


# ----------------------------------------------------------------------------- image metadata


def _vcr_copy(tmp_path, demo_root):
    """The demo VCR train split cut to its first record, and that record's image and
    metadata paths."""
    root = tmp_path / "vcr"
    shutil.copytree(demo_root / "vcr", root)
    first = (root / "train.jsonl").read_text().splitlines()[0]
    (root / "train.jsonl").write_text(first + "\n")
    record = json.loads(first)
    return root, root / "vcr1images" / record["img_fn"], root / "vcr1images" / record["metadata_fn"]


def _change_box(meta, box) -> None:
    data = json.loads(meta.read_text())
    data["boxes"][0] = box
    meta.write_text(json.dumps(data).replace("Infinity", "1e999"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda image, meta: __import__("PIL.Image").Image.new("RGB", (1, 1)).save(image),
            "the image is 1x1 pixels but its metadata",
        ),
        (lambda image, meta: _change_box(meta, [40, 30, 10, 50, 0.9]), "box 0 is inverted"),
        (
            lambda image, meta: _change_box(meta, [0, 0, float("inf"), 9, 0.9]),
            "box 0 holds a non-finite number",
        ),
    ],
)
def test_an_image_that_disagrees_with_its_metadata_is_refused_by_regions(
    tmp_path, demo_root, faults, damage, message
):
    """Issue 31.5: pixels of another size than the metadata says (1x1 vs 96x96), an inverted
    box, an infinite coordinate: `madcache regions` refuses the image in one line naming the
    file, and stores nothing."""
    root, image, meta = _vcr_copy(tmp_path, demo_root)
    damage(image, meta)
    out = tmp_path / "regions"
    line = faults.one_line_error(
        faults.invoke(
            "regions",
            "--dataset",
            "vcr",
            "--root",
            root,
            "--split",
            "train",
            "--extractor",
            "boxcrop",
            "--out",
            out,
            "--no-progress",
        )
    )
    assert message in line and (image.name in line or meta.name in line)
    assert not list(out.glob("shard-*"))


KILL_A_WORKER = """
import os, signal, sys
import torch
import madcache.extraction.jobs as jobs
get = jobs.JobDataset.__getitem__
def dying(self, job):
    if torch.utils.data.get_worker_info() is not None and job.shard == 1:
        os.kill(os.getpid(), signal.SIGKILL)         # as the kernel's OOM killer would
    return get(self, job)
jobs.JobDataset.__getitem__ = dying
from madcache.cli import main
sys.argv = ["madcache", *sys.argv[1:]]
main()
"""


def test_a_killed_data_loading_worker_is_one_line_and_the_cache_resumes(
    tmp_path, snli_root, tiny_clip, faults, reference
):
    import subprocess
    import sys

    out = tmp_path / "cache"
    args = faults.extract_args(snli_root, out, tiny_clip, "--workers", "1")
    result = subprocess.run(
        [sys.executable, "-c", KILL_A_WORKER, *map(str, args)],
        env=faults.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"extracting into {out}: a data-loading worker process died" in lines[0]
    assert "Rerun the same command" in lines[0]
    assert faults.invoke(*args).exit_code == 0
    assert_same_cache(out, reference)


def test_two_region_builds_into_one_store_share_the_shards(tmp_path, snli_root, faults):
    """Two `madcache regions` started at once into one --out: every shard is written once (the
    second waits for the first's claim, then skips the committed shard), both report the
    same store, and it verifies. Before, each rewrote the other's shards, and one reported a
    region count read while a shard was uncommitted."""
    import re
    import subprocess
    import sys

    out = tmp_path / "regions"
    args = [
        sys.executable,
        "-m",
        "madcache",
        "regions",
        "--dataset",
        "snli-ve",
        "--root",
        str(snli_root),
        "--split",
        "train",
        "--out",
        str(out),
        "--shard-size",
        "2",
        "--no-progress",
    ]
    children = [
        subprocess.Popen(
            args, env=faults.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [c.returncode for c in children] == [0, 0], outputs
    counts = [
        re.search(
            r"(\d+) images, (\d+) regions \((\d+) shards written, (\d+) reused", stdout
        ).groups()
        for stdout, _ in outputs
    ]
    assert counts[0][:2] == counts[1][:2]
    assert int(counts[0][2]) + int(counts[1][2]) == 6  # 12 images, 2 per shard
    assert verify_cache(out) == []
