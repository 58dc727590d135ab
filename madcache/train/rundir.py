"""The run directory is a contract (docs/training.md, "The run directory").

- A new run goes into an empty (or absent) directory. A directory that holds anything is refused
  unless `--resume` (continue the run there) or `--overwrite` (delete madcache's own run files
  first, never anything else) is given.
- `--resume` refuses, naming every difference at once, any setting that would change the result:
  every key of `config.json` except the `RESUMABLE_CHANGES` allow-list, and the digests of what
  the run reads (`inputs.json`: the cache's fingerprint, the low-shot split's bytes), so a
  different cache at the same path is refused while a moved one is not.
- `config.json` and `inputs.json` are written only after every check passed.
- One writer: a training process holds an exclusive lock on the directory (`one_writer`) from
  its first check to its last write; a second one is refused in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from madcache.core.device import device_kind
from madcache.core.errors import ConfigError, OutputLocationError, RunDirectoryError
from madcache.core.io import check_output_location, read_json, write_json, writing
from madcache.students.predict import STUDENT_DIR
from madcache.train.checkpoint import CHECKPOINT, SELECTED, TRAINER_STATE
from madcache.train.config import OPTIMIZER_KEYS, SELECTION_KEYS, TrainConfig

CONFIG = "config.json"
INPUTS = "inputs.json"
METRICS = "metrics.json"
SPLIT = "split.json"
VERIFIED = "verified_reads"  # inputs.json: the shards checked against their sha256s
TENSORBOARD = "tensorboard"
TRANSFORMERS_DIR = "hf"  # a transformers student's save_pretrained (save_run_student)
TRANSFORMERS_RECORD = "madcache.json"
TRACKER_FILES = ("wandb", "mlruns", "mlflow-run.json")  # --report-to wandb / mlflow
# what `madcache train` writes into a run directory: all `--overwrite` deletes
RUN_FILES = (
    CONFIG,
    INPUTS,
    CHECKPOINT,
    SELECTED,
    TRAINER_STATE,
    METRICS,
    SPLIT,
    STUDENT_DIR,
    TRANSFORMERS_DIR,
    TENSORBOARD,
    *TRACKER_FILES,
)

# settings that may change on --resume: they change where and how fast a run trains, or how
# often it reports, not what it computes (grad_accum splits the same global batch; the weights
# after each step do not depend on eval_every). `cache` and `split_file` are paths: the run
# compares what they hold (inputs.json), so a moved cache or split file resumes.
# `device` may change within its kind (cuda:0 -> cuda:1); a change of kind is `device_change`'s.
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "overwrite",
        "out",
        "device",
        "grad_accum",
        "prefetch",
        "report_to",
        "checkpoint_every",
        "checkpoint_minutes",
        "eval_every",
        "cache",
        "split_file",
        "allow_device_change",
        "eval_caches",
    }
)
RESUMABLE_NOTE = "the run is resumable: free space or fix the permissions, then rerun with --resume"


def open_run_dir(config: TrainConfig) -> None:
    """Before anything is read or written: refuse to train into a directory that holds
    anything without --resume or --overwrite; with --overwrite, delete madcache's run files
    (rank 0 alone, under torchrun)."""
    run_dir = Path(config.out)
    check_output_location(
        run_dir,
        roots=[config.root],
        inputs=[
            config.cache,
            config.regions,
            config.eval_regions,
            config.split_file,
            *student_paths(config),
        ],
    )
    if config.resume and config.overwrite:
        raise ConfigError(
            "--resume continues the run in --out and --overwrite deletes it; give one of them"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"--out {run_dir} is a file; give a directory for the run")
    if config.overwrite:
        clear_run_files(run_dir)
        return
    if config.resume or not run_dir.is_dir():
        return
    entries = sorted(p.name for p in run_dir.iterdir())
    if (run_dir / CONFIG).is_file():
        raise RunDirectoryError(
            f"--out {run_dir} already holds a run; pass --resume to "
            "continue it, --overwrite to replace it, or choose a new --out"
        )
    if entries:
        raise RunDirectoryError(
            f"--out {run_dir} is not empty ({', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); pass --resume to "
            "continue a run there, --overwrite to replace madcache's run "
            "files in it, or choose a new --out"
        )


@contextlib.contextmanager
def one_writer(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` (flock on the folder itself, released when the
    process ends, however it ends): two processes never write one run. A folder this call had
    to create is removed again if the run is refused before writing anything into it."""
    if run_dir.exists() and not run_dir.is_dir():
        yield  # open_run_dir refuses it in one line
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryError(
                f"--out {run_dir} is being written by another madcache "
                "process; wait for it to end or choose another --out"
            ) from None
        yield
    except BaseException:
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    finally:
        os.close(handle)


def check_same_run(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Refuse to count the finished run in `run_dir` as this job's when it was trained with
    other settings (another sweep over the same runs folder wrote it)."""
    resolved = TrainConfig.from_dict(config).to_dict()  # defaults filled in, as recorded
    differing = differences(
        with_optimizer_defaults(load_run_config(run_dir), resolved), resolved, {}, {}
    )
    if differing:
        raise RunDirectoryError(
            f"{run_dir} holds a run trained with other settings "
            f"({'; '.join(differing[:3])}): another sweep wrote it; give "
            "this sweep its own runs folder"
        )


def run_files(run_dir: str | Path) -> list[Path]:
    """The paths of what `madcache train` writes into `run_dir` (whether present or not)."""
    return [Path(run_dir) / name for name in RUN_FILES]


def student_paths(config: TrainConfig) -> list[str]:
    """The files and folders a student's options name (pretrained checkpoints, tokenizers)."""
    return [
        value
        for key, value in config.student_options.items()
        if isinstance(value, str) and (key.endswith(("_dir", "_from")) or key == "checkpoint")
    ]


def clear_run_files(run_dir: Path) -> None:
    """Delete what `madcache train` writes into `run_dir` (RUN_FILES and their temporary files),
    nothing else."""
    if not run_dir.is_dir():
        return
    with writing(run_dir, error=RunDirectoryError, then="fix the permissions and rerun"):
        for entry in run_dir.iterdir():
            name = entry.name
            own = name in RUN_FILES or any(name.startswith(f".{f}.tmp-") for f in RUN_FILES)
            if not own:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json as written; one error line when it is missing or unreadable."""
    if not (run_dir / CONFIG).is_file():
        raise RunDirectoryError(
            f"no run in {run_dir} (no {CONFIG}); give a directory written by `madcache train`"
        )
    return read_json(
        run_dir / CONFIG,
        error=RunDirectoryError,
        hint="restore it, or train the run again with --overwrite",
    )


def load_run(run_dir: str | Path) -> TrainConfig:
    """The `TrainConfig` a run was trained with (evaluation, prediction)."""
    path = Path(run_dir)
    return TrainConfig.from_dict(load_run_config(path), where=f"{path / CONFIG}: ")


def check_resume(run_dir: Path, config: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse to resume the run in `run_dir` with settings or inputs that would change its
    result, naming every one that differs (what the run recorded, what this call has)."""
    if not (run_dir / CONFIG).is_file():
        return  # nothing was recorded: a fresh start
    saved = with_optimizer_defaults(load_run_config(run_dir), config)
    saved_inputs = (
        read_json(
            run_dir / INPUTS,
            error=RunDirectoryError,
            hint="restore it, or pass --overwrite to start the run again",
        )
        if (run_dir / INPUTS).is_file()
        else {}
    )
    saved_inputs, inputs = dict(saved_inputs), dict(inputs)
    for recorded in (saved_inputs, inputs):  # a record of checks, not a setting: the
        recorded.pop(VERIFIED, None)  # cache's identity is its fingerprint
    if "device" in inputs:  # a run recorded before devices were: its config's device
        change = device_change(
            saved_inputs.pop("device", saved.get("device")),
            inputs.pop("device"),
            allowed=config.get("allow_device_change"),
        )
        if change:
            raise ConfigError(f"--resume: {change}")
    saved_inputs.pop("device", None)
    differing = differences(saved, config, saved_inputs, inputs)
    if differing:
        raise ConfigError(
            f"--resume: the run in {run_dir} was trained with other settings: "
            f"{'; '.join(differing)}. Resume with the same settings "
            "(docs/training.md lists those that may change) or train into a new "
            "--out"
        )


def with_optimizer_defaults(saved: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded training config with the optimizer, schedule and selection settings it lacks
    (a run recorded before they existed) set to their defaults: the AdamW, linear schedule and
    last step's weights that run trained with. Only keys `config` has are filled (an adapter's
    config has none)."""
    defaults = TrainConfig(dataset="", root="", out="").to_dict()
    return {
        **{key: defaults[key] for key in (*OPTIMIZER_KEYS, *SELECTION_KEYS) if key in config},
        **saved,
    }


def differences(
    saved: Mapping[str, Any],
    config: Mapping[str, Any],
    saved_inputs: Mapping[str, Any],
    inputs: Mapping[str, Any],
) -> list[str]:
    """'key: run X, now Y' for every result-changing setting or input digest that differs."""
    out = [
        f"{key}: run {saved.get(key)!r}, now {config.get(key)!r}"
        for key in sorted(set(saved) | set(config))
        if not may_change(key, config) and saved.get(key) != config.get(key)
    ]
    out += [
        f"{key}: run {saved_inputs.get(key)}, now {inputs.get(key)}"
        for key in sorted(set(saved_inputs) | set(inputs))
        if saved_inputs.get(key) != inputs.get(key)
    ]
    return out


def may_change(key: str, config: Mapping[str, Any]) -> bool:
    """Whether setting `key` may differ on --resume. eval_every may, unless the run keeps its
    best validated step (select = best): then the steps it validates choose the weights."""
    if key == "eval_every" and config.get("select") == "best":
        return False
    return key in RESUMABLE_CHANGES


def device_change(run: str | None, now: str, *, allowed: bool | None = False) -> str | None:
    """Why a run trained on device `run` may not continue on `now`, or None. Results are defined
    to match within a device kind only (docs/guarantees.md, "Resuming on another device"):
    cpu -> cpu, cuda -> cuda; cpu <-> cuda changes the arithmetic (kernels, bf16 by default on
    CUDA), so it is refused unless `allowed` (--allow-device-change)."""
    if run is None or allowed or device_kind(run) == device_kind(now):
        return None
    return (
        f"the run trained on {run} and would continue on {now}; results differ between "
        f"device kinds, so resume with --device {device_kind(run)} (on a machine that has "
        "it), or pass --allow-device-change to continue anyway (the result then matches "
        "neither an uninterrupted cpu nor cuda run)"
    )


def run_inputs(provenance: Mapping[str, Any], *, device: str | None = None) -> dict[str, Any]:
    """What a run's result depends on besides config.json (inputs.json): the digests of what it
    reads (the cache's fingerprint, the split), the shards it verified before its first step
    (`verified_reads`: {"cache"|"regions": {shard: digest}}, cache/verified.py), torch's thread
    count and determinism mode and, for a training run, the resolved device (`--device auto`
    made concrete)."""
    inputs = {
        "cache_fingerprint": provenance.get("cache_fingerprint"),
        "split_digest": provenance.get("split_digest"),
        VERIFIED: provenance.get(VERIFIED),
        "torch_threads": provenance.get("torch_threads"),
        "deterministic_algorithms": provenance.get("deterministic_algorithms"),
    }
    if device is not None:
        inputs["device"] = device
    return inputs


def record_run(run_dir: Path, config: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Write inputs.json, then config.json (after every check passed): config.json is what says
    a run was recorded, so a kill between the two leaves a directory that resumes."""
    with writing(run_dir, error=RunDirectoryError, then=RESUMABLE_NOTE):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / INPUTS, dict(inputs))
        write_json(run_dir / CONFIG, dict(config))


def save_run_student(
    save_student: Callable[[Any, Path], None], student: Any, run_dir: Path
) -> dict[str, Any]:
    """The finished run's student: madcache's `student/` (`save_student`) and, for a student
    wrapping a transformers model (`save_transformers`), `hf/`: its `save_pretrained` folder,
    written whole or not at all. Returns the run's record of `hf/` (metrics.json's
    `transformers`), empty for other students."""
    save_student(student, run_dir / STUDENT_DIR)
    save = getattr(student, "save_transformers", None)
    if save is None:
        return {}
    record = replace_folder(
        run_dir / TRANSFORMERS_DIR, lambda folder: {"student": student.name, **save(folder)}
    )
    return {"transformers": {"dir": TRANSFORMERS_DIR, **record}}


def replace_folder(target: Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Fill a temporary folder beside `target` with `write(folder)` (which returns the record
    kept in it as madcache.json), then rename it to `target`: a kill leaves the old folder or
    the new one. An existing `target` is replaced only if madcache wrote it (its record)."""
    if target.exists() and not (target / TRANSFORMERS_RECORD).is_file():
        raise OutputLocationError(
            f"{target} exists and was not written by madcache; move it away and rerun with --resume"
        )
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.tmp-{os.getpid()}-old")
    for leftover in (temp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    temp.mkdir()
    try:
        record = write(temp)
        (temp / TRANSFORMERS_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        if target.exists():
            os.replace(target, old)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return record
