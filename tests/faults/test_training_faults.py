"""Training runs under faults (issue 12 items 1, 2, 5): `madcache train` killed at named points
and resumed, checkpoints and run files damaged, resumes with other settings or another cache,
reruns into a used run directory, disks that refuse writes.

The end-to-end cases run the real CLI in child processes on the 12-image SNLI-VE split
(tests/faults/conftest.py `train_world`); the reference is one uninterrupted run, and every
killed-and-resumed run must end with the same history, evaluation and student weights. The
in-process cases use the stand-in setups of tests/train/test_train.py."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from madcache.core.errors import CheckpointCorruptError, ConfigError, RunDirectoryError
from madcache.train.checkpoint import CHECKPOINT, read_checkpoint
from madcache.train.loop import train


def same_run(a, b) -> None:
    """Two run directories ended in the same place: history, evaluation, student weights."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["status"] == mb["status"] == "complete"
    assert ma["history"] == mb["history"] and ma["eval"] == mb["eval"]
    wa, wb = (load_file(str(d / "student" / "model.safetensors")) for d in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_world, faults):
    """One uninterrupted CLI run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    faults.finish(faults.start_cli(faults.train_args(train_world, out)))
    return out


# ----------------------------------------------------------------------------- kill and resume

KILL_POINTS = [
    ("after-record", 1),
    ("checkpoint-unrenamed", 1),
    ("checkpoint-unmirrored", 2),
    ("checkpoint-unrenamed", 3),
    ("before-metrics", 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("point,step", KILL_POINTS)
def test_kill_at_a_named_point_then_resume_equals_uninterrupted(
    tmp_path, train_world, faults, reference, point, step
):
    """SIGKILL at each point of the run-directory protocol; `--resume` then ends where the
    uninterrupted run ends (checkpoint 3 is the final one, written after the last step)."""
    out, marker = tmp_path / "run", tmp_path / "reached"
    child = faults.start_cli(
        faults.train_args(train_world, out), point=point, marker=marker, step=step
    )
    faults.wait_for(marker, child)
    faults.kill(child)
    assert (out / "config.json").is_file()
    if (out / CHECKPOINT).exists():
        read_checkpoint(out / CHECKPOINT)  # whatever the kill left verifies
    faults.finish(faults.start_cli(faults.train_args(train_world, out, "--resume")))
    same_run(out, reference)


# ----------------------------------------------------------------------------- the run contract


@pytest.fixture
def used_run(tmp_path, reference):
    """A copy of the reference run, and its files' bytes."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out, snapshot(out)


def snapshot(run_dir) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_rerun_into_a_used_run_directory_is_refused(used_run, train_world, faults):
    """Without --resume or --overwrite a used run directory is left alone (a rerun with another
    seed used to mix its checkpoint with the old run's "complete" metrics)."""
    out, before = used_run
    args = faults.train_args(train_world, out, "--seed", "1")
    line = faults.one_line_error(faults.invoke(*args))
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert snapshot(out) == before


def test_a_non_empty_directory_is_refused_and_left_alone(tmp_path, train_world, faults):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    line = faults.one_line_error(faults.invoke(*faults.train_args(train_world, out)))
    assert "is not empty (notes.txt)" in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_with_other_settings_names_every_difference(used_run, train_world, faults):
    """Another teacher cache at another path, method, seed and lr: all named at once, before
    anything is written (it used to accept the cache, and rewrite config.json first)."""
    out, before = used_run
    args = faults.train_args(
        train_world, out, "--resume", "--seed", "3", "--lr", "0.5", method="mad"
    )
    args[args.index("--cache") + 1] = str(train_world.other_cache)
    line = faults.one_line_error(faults.invoke(*args))
    for named in (
        "cache_fingerprint: run ",
        "lr: run 0.001, now 0.5",
        "method: run 'md', now 'mad'",
        "seed: run 0, now 3",
    ):
        assert named in line, line
    assert snapshot(out) == before


def test_another_cache_at_the_same_path_is_refused(tmp_path, train_world, faults):
    """The cache is compared by fingerprint, not by path: re-extracting another teacher into
    the same folder between two calls is refused on --resume."""
    cache = tmp_path / "cache"
    shutil.copytree(train_world.cache, cache)
    out = tmp_path / "run"
    args = faults.train_args(train_world, out, "--max-steps", "2")
    args[args.index("--cache") + 1] = str(cache)
    assert faults.invoke(*args).exit_code == 0
    shutil.rmtree(cache)
    shutil.copytree(train_world.other_cache, cache)
    line = faults.one_line_error(faults.invoke(*args, "--resume"))
    assert "cache_fingerprint: run " in line and "lr" not in line.split("settings:")[1]


def test_resume_accepts_a_moved_cache_and_the_allowed_changes(
    used_run, tmp_path, train_world, faults
):
    """Settings on the allow-list (docs/training.md) and a cache moved to another path with the
    same fingerprint resume; the result is unchanged."""
    out, before = used_run
    moved = tmp_path / "moved-cache"
    shutil.copytree(train_world.cache, moved)
    args = faults.train_args(
        train_world,
        out,
        "--resume",
        "--eval-every",
        "3",
        "--prefetch",
        "1",
        "--grad-accum",
        "2",
        "--checkpoint-every",
        "5",
    )
    args[args.index("--cache") + 1] = str(moved)
    result = faults.invoke(*args)
    assert result.exit_code == 0, result.output
    after = json.loads((out / "metrics.json").read_text())
    assert after["history"] == json.loads(before["metrics.json"])["history"]


def test_overwrite_replaces_only_the_run_files(used_run, train_world, faults):
    out, _ = used_run
    (out / "notes.txt").write_text("keep")
    (out / "mine").mkdir()
    (out / "mine" / "a.txt").write_text("keep")
    result = faults.invoke(*faults.train_args(train_world, out, "--overwrite", "--seed", "1"))
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "keep" and (out / "mine" / "a.txt").is_file()
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1


def test_resume_and_overwrite_together_are_refused(used_run, train_world, faults):
    out, before = used_run
    line = faults.one_line_error(
        faults.invoke(*faults.train_args(train_world, out, "--resume", "--overwrite"))
    )
    assert "give one of them" in line and snapshot(out) == before


# ----------------------------------------------------------------------------- damaged files


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["tensor byte", "state byte", "truncated", "empty"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(used_run, train_world, faults, damage):
    out, _ = used_run
    path = out / CHECKPOINT
    size = path.stat().st_size
    header = int.from_bytes(path.read_bytes()[:8], "little")
    if damage == "tensor byte":
        flip_byte(path, 8 + header + (size - 8 - header) // 2)
    elif damage == "state byte":  # a digit of the trainer state in the metadata
        text = path.read_bytes()[: 8 + header]
        flip_byte(path, text.index(b'global_step\\": ') + len(b'global_step\\": '))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: size // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointCorruptError, match=str(path)):
        read_checkpoint(path)
    line = faults.one_line_error(faults.invoke(*faults.train_args(train_world, out, "--resume")))
    assert str(path) in line and ("checksum mismatch" in line or "corrupt or truncated" in line)


def test_a_checkpoint_without_a_checksum_is_refused(used_run):
    """A safetensors file that `madcache train` did not write (or an older version did)."""
    from safetensors.torch import save_file

    out, _ = used_run
    save_file(
        {"student.x": torch.zeros(2)},
        str(out / CHECKPOINT),
        metadata={"madcache.trainer_state": "{}"},
    )
    with pytest.raises(CheckpointCorruptError, match="no madcache trainer state or checksum"):
        read_checkpoint(out / CHECKPOINT)


@pytest.mark.parametrize(
    "name,content",
    [
        ("config.json", b'{"dataset": "snli-ve", '),
        ("config.json", b"\xff\xfe{}"),
        ("inputs.json", b"[" * 100_000),
        ("metrics.json", b"{,}"),
    ],
)
def test_a_damaged_run_json_file_is_one_line_naming_it(
    used_run, train_world, faults, name, content
):
    out, _ = used_run
    (out / name).write_bytes(content)
    command = (
        faults.train_args(train_world, out, "--resume")
        if name != "metrics.json"
        else ["eval", "--run", out, "--split", "train"]
    )
    line = faults.one_line_error(faults.invoke(*command))
    assert str(out / name) in line and "not a readable JSON file" in line


def test_damaged_student_weights_are_one_line_naming_the_file(used_run, faults):
    out, _ = used_run
    weights = out / "student" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = faults.one_line_error(faults.invoke("eval", "--run", out, "--split", "train"))
    assert str(weights) in line and "student weights file is corrupt or truncated" in line


def test_damaged_init_weights_are_one_line_naming_the_file(tmp_path):
    """A pretrained directory a student starts from (`init_text_from`), truncated."""
    from transformers import BertConfig, BertModel

    from madcache.core.errors import CheckpointCorruptError
    from madcache.students import build_student

    source = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=64,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    ).save_pretrained(source)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointCorruptError, match=f"{source}: init_text_from checkpoint"):
        build_student(
            "single-stream", task="classification", num_classes=3, init_text_from=str(source)
        )


# ----------------------------------------------------------------------------- disks that refuse


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_refused_checkpoint_write_is_one_line_and_resumable(
    tmp_path, monkeypatch, standins, code
):
    """Simulated at the write seam (`core.io`'s temporary file), in process: a real full disk
    needs a tmpfs this suite cannot mount. The second checkpoint fails; the error names the
    run directory, says it is resumable, and --resume then ends where an uninterrupted run
    ends."""
    import madcache.core.io as core_io

    settings = dict(method="md", checkpoint_every=2, eval_every=3)
    full = train(standins.make_setup(tmp_path / "full", **settings))
    real, calls = core_io._written_temp, []

    def refusing(path, data):
        if path.name == CHECKPOINT:
            calls.append(path)
            if len(calls) == 2:
                raise OSError(code, os.strerror(code))
        return real(path, data)

    monkeypatch.setattr(core_io, "_written_temp", refusing)
    with pytest.raises(RunDirectoryError, match="the run is resumable") as caught:
        train(standins.make_setup(tmp_path / "cut", **settings))
    assert str(tmp_path / "cut" / "run") in str(caught.value)
    monkeypatch.setattr(core_io, "_written_temp", real)
    resumed = train(standins.make_setup(tmp_path / "cut", resume=True, **settings))
    assert resumed["history"] == full["history"] and resumed["eval"] == full["eval"]


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes into read-only folders; the in-process EROFS/EACCES cases above cover it",
)
def test_a_read_only_run_directory_is_one_line(used_run, train_world, faults):
    out, _ = used_run
    os.chmod(out, 0o555)
    try:
        args = faults.train_args(train_world, out, "--overwrite")
        line = faults.one_line_error(faults.invoke(*args))
    finally:
        os.chmod(out, 0o755)
    assert str(out) in line and "permission denied" in line.lower()


def test_the_cli_turns_a_disk_error_into_one_line(monkeypatch, faults):
    import madcache.experiments.report as report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/report.md")

    monkeypatch.setattr(report, "build_report", full)
    line = faults.one_line_error(faults.invoke("report", "."))
    assert line == (
        "Error: /runs/report.md: no space left on the device; free space or fix the "
        "permissions, then rerun the same command"
    )


@pytest.mark.parametrize(
    "code, problem",
    [(errno.ENOSPC, "no space left on the device"), (errno.EFBIG, "file larger than allowed")],
)
def test_a_failed_write_without_a_file_name_names_the_output(monkeypatch, faults, code, problem):
    """A write to an open file fails without a file name (full disk, ulimit -f): the line
    names the command's --out instead of "a file" (issue 31.8)."""
    import madcache.experiments.report as report

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(report, "build_report", full)
    line = faults.one_line_error(faults.invoke("report", ".", "--out", "/somewhere/report"))
    assert line.startswith(f"Error: /somewhere/report: {problem}")


# ----------------------------------------------------------------------------- in process


def test_resume_in_process_names_the_cache_fingerprint(tmp_path, standins):
    train(standins.make_setup(tmp_path, method="md", checkpoint_every=2))
    setup = standins.make_setup(tmp_path, method="md", checkpoint_every=2, resume=True, seed=4)
    setup.provenance["cache_fingerprint"] = "another"
    with pytest.raises(
        ConfigError,
        match="other settings: seed: run 0, now 4; cache_fingerprint: run abc, now another\\. ",
    ):
        train(setup)
