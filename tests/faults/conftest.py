"""The fault-injection suite's shared helpers: caches to damage, and `madcache` child processes
that stop at a named point so the test can SIGKILL them exactly there.

Each area has its own file (test_cache_faults.py, test_extraction_faults.py, ...). The tiny CLIP,
the SNLI-VE split and the hand-built cache world come from tests/extraction/conftest.py and
tests/cache/conftest.py, loaded by path (conftest modules are not importable)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _load(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, str(TESTS / relative))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


extraction_helpers = _load("extraction/conftest.py", "faults_extraction_helpers")
cache_helpers = _load("cache/conftest.py", "faults_cache_helpers")
train_helpers = _load("train/conftest.py", "faults_train_helpers")

# The real CLI in a child process, with a hook at the named point FAULT_POINT: when reached it
# writes FAULT_MARKER (its pid) and waits, FAULT_PAUSE seconds or, with FAULT_GO, until that file
# exists; so the parent can kill it there, or hold it there while another process works.
#   before-commit: a shard's arrays and index part are in place, its commit record is not
#   after-shard:   after each committed shard
# and in `madcache train` (FAULT_STEP: which checkpoint, counted from 1):
#   after-record:           config.json and inputs.json are written, no step has run
#   checkpoint-unrenamed:   the FAULT_STEP-th checkpoint is complete under its temporary name
#   checkpoint-unmirrored:  it is renamed into place, trainer_state.json is not yet updated
#   before-metrics:         the last checkpoint and the student are saved, metrics.json is not
CHILD = """
import os, sys, time
from pathlib import Path
import madcache.cache.writer as writer
import madcache.core.io as core_io
import madcache.train.checkpoint as checkpoint
import madcache.train.loop as loop

point = os.environ.get("FAULT_POINT", "")
marker = Path(os.environ.get("FAULT_MARKER", os.devnull))
pause = float(os.environ.get("FAULT_PAUSE", "60"))
go = os.environ.get("FAULT_GO")

def reached():
    marker.write_text(str(os.getpid()))
    if go is None:
        time.sleep(pause)
        return
    deadline = time.monotonic() + 600
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.05)

if point == "before-commit":
    commit = writer.write_commit
    def hooked_commit(store, record):
        reached()
        commit(store, record)
    writer.write_commit = hooked_commit
elif point == "after-shard":
    write_shard = writer.CacheWriter.write_shard
    def hooked_write(self, *args, **kwargs):
        write_shard(self, *args, **kwargs)
        reached()
    writer.CacheWriter.write_shard = hooked_write
elif point == "after-record":
    record_run = loop.record_run
    def hooked_record(*args):
        record_run(*args)
        reached()
    loop.record_run = hooked_record
elif point in ("checkpoint-unrenamed", "checkpoint-unmirrored"):
    step, saves = int(os.environ.get("FAULT_STEP", "1")), []
    write_json = checkpoint.write_json
    def hooked_atomic(path, data):
        saves.append(path)
        temp = core_io._written_temp(Path(path), data)
        if point == "checkpoint-unrenamed" and len(saves) == step:
            reached()
        os.replace(temp, path)
    def hooked_mirror(path, payload):
        if point == "checkpoint-unmirrored" and len(saves) == step:
            reached()
        write_json(path, payload)
    checkpoint.atomic_write_bytes = hooked_atomic
    checkpoint.write_json = hooked_mirror
elif point == "before-metrics":
    write_json = loop.write_json
    def hooked_metrics(path, payload):
        reached()
        write_json(path, payload)
    loop.write_json = hooked_metrics

from madcache.cli import main
sys.argv = ["madcache", *sys.argv[1:]]
main()
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN",
        )
    }
    return {
        **env,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(TESTS.parent),
        **extra,
    }


def start_cli(
    args: list[str],
    *,
    point: str = "",
    marker: Path | None = None,
    pause: float = 60.0,
    go: Path | None = None,
    step: int = 1,
) -> subprocess.Popen:
    """`madcache ARGS` in a child process with the fault hook at `point` (held until the file
    `go` exists, when given; `step`: which checkpoint, for the training points)."""
    env = child_env(
        FAULT_POINT=point,
        FAULT_MARKER=str(marker or os.devnull),
        FAULT_PAUSE=str(pause),
        FAULT_STEP=str(step),
        **({"FAULT_GO": str(go)} if go else {}),
    )
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(marker: Path, child: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until the child reached its fault point (fails if it ended first)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"child ended before its fault point: {child.stderr.read()}")
        assert time.monotonic() < deadline, f"no fault point reached within {timeout} s"
        time.sleep(0.02)


def wait_for_commits(out: Path, n: int, child: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until the cache at `out` has `n` commit records (fails if `child` ended first)."""
    deadline = time.monotonic() + timeout
    while len(list((out / "commits").glob("*.json"))) < n:
        if child.poll() is not None:
            raise AssertionError(f"child ended early: {child.stderr.read()}")
        assert time.monotonic() < deadline, f"no {n} commits within {timeout} s"
        time.sleep(0.05)


def invoke(*args: object):
    """`madcache ARGS` in this process (click's runner)."""
    from click.testing import CliRunner

    from madcache.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    """The CLI's error output, checked to be one line without a traceback, and `code`."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.communicate()


def finish(child: subprocess.Popen, timeout: float = 540.0) -> str:
    """The child's stdout after it exits 0 (its stderr in the failure message otherwise)."""
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, f"exit {child.returncode}: {err[-2000:]}"
    return out


extract_args = extraction_helpers.snli_extract_args


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[str, Path]:
    config, checkpoint = extraction_helpers.save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    return f"openclip-config:{config}", checkpoint


@pytest.fixture(scope="session")
def snli_root(tmp_path_factory) -> Path:
    return extraction_helpers.write_snli_split(tmp_path_factory.mktemp("snli"))


TINY_STUDENT = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=32)


@pytest.fixture(scope="session")
def train_world(tmp_path_factory, snli_root, tiny_clip) -> SimpleNamespace:
    """What a real `madcache train` run needs, on the 12-image SNLI-VE split: a cache from the
    tiny CLIP, a second cache of the same split from another tiny CLIP (same path layout, other
    fingerprint), and a region store."""
    from madcache.extraction import ExtractConfig, extract
    from madcache.students.regions import build_region_store

    base = tmp_path_factory.mktemp("train-world")
    name, checkpoint = tiny_clip
    other_config, other_checkpoint = extraction_helpers.save_tiny_clip(base / "other-clip", seed=2)
    for out, teacher, weights in (
        (base / "cache", name, checkpoint),
        (base / "other-cache", f"openclip-config:{other_config}", other_checkpoint),
    ):
        extract(
            ExtractConfig(
                dataset="snli-ve",
                root=snli_root,
                split="train",
                teacher=teacher,
                checkpoint=weights,
                out=out,
                shard_size=6,
                progress=False,
            )
        )
    build_region_store(
        dataset="snli-ve",
        root=snli_root,
        split="train",
        extractor="boxcrop",
        out=base / "regions",
        max_regions=2,
        progress=False,
    )
    return SimpleNamespace(
        root=snli_root,
        cache=base / "cache",
        other_cache=base / "other-cache",
        regions=base / "regions",
        base=base,
    )


def train_args(world: SimpleNamespace, out: Path, *extra: str, method: str = "md") -> list[str]:
    """`madcache train` on `world`: 36 pairs, batch 8 (5 steps), a checkpoint every 2 steps."""
    args = [
        "train",
        "--method",
        method,
        "--dataset",
        "snli-ve",
        "--root",
        str(world.root),
        "--split",
        "train",
        "--eval-split",
        "train",
        "--cache",
        str(world.cache),
        "--regions",
        str(world.regions),
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]
    args += [f"--student-option={k}={v}" for k, v in TINY_STUDENT.items()]
    return [*args, *extra]


@pytest.fixture(scope="session")
def standins():
    """The training stand-ins of tests/train/test_train.py (a tiny student, hand-built
    targets, `make_setup`)."""
    return train_helpers.load_standins()


@pytest.fixture(scope="session")
def faults():
    """The helpers above, for the test modules."""
    return SimpleNamespace(
        start_cli=start_cli,
        wait_for=wait_for,
        kill=kill,
        finish=finish,
        wait_for_commits=wait_for_commits,
        extract_args=extract_args,
        child_env=child_env,
        train_args=train_args,
        invoke=invoke,
        one_line_error=one_line_error,
        make_world=cache_helpers.make_world,
        make_manifest=cache_helpers.make_manifest,
        write_world=cache_helpers.write_world,
        snli_images=extraction_helpers.SNLI_IMAGES,
    )
