"""Checkpoints: student + projections + optimizer tensors (AdamW's moments and step counts,
SGD's momentum buffers) as safetensors (no pickles), with the
scalar trainer state as JSON in the same file's metadata and a sha256 over both, so one rename
commits weights, state and checksum together (a kill never pairs new weights with an old step)
and a changed byte is refused on load, naming the file. `trainer_state.json` mirrors the state
for people and tools. No RNG state is needed: every random draw of a step (dropout, AF masks)
is seeded from (seed, stage, step, rank, micro-batch), and the data order from (seed, stage,
epoch), so a resumed run continues exactly where the checkpoint left off."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from madcache.core.errors import CheckpointCorruptError, ConfigError
from madcache.core.io import atomic_write_bytes, unreadable, write_json
from madcache.method.methods import TASK
from madcache.train.distributed import main_first
from madcache.train.setup import Setup

CHECKPOINT = "checkpoint.safetensors"
TRAINER_STATE = "trainer_state.json"
STATE_KEY = "madcache.trainer_state"
CHECKSUM_KEY = "madcache.checksum"


@dataclass
class TrainerState:
    """Where training is: resumable from `checkpoint.safetensors` (tensors + this, as metadata)."""

    stage: str = "af"  # "af" | "task" | "done"
    stage_step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    part_sums: dict[str, float] = field(default_factory=dict)  # per loss part, since a record
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1  # processes that trained up to this state
    precision: str = "fp32"  # the resolved --precision
    cw_counts: dict[str, list[int]] = field(default_factory=dict)  # stage -> [fired, seen]

    def count_cw(self, parts: Mapping[str, float]) -> None:
        """Add a step's CW counts (`cw_fired` / `cw_seen` in its loss parts) to its stage."""
        if "cw_seen" in parts:
            counts = self.cw_counts.setdefault(self.stage, [0, 0])
            counts[0] += int(round(parts["cw_fired"]))
            counts[1] += int(round(parts["cw_seen"]))

    def cw_fired(self) -> dict[str, float]:
        """Per stage with confidence weighting: the fraction of training instances (over all
        its steps) where CW fired, i.e. the teacher was more confident than the student."""
        return {stage: fired / seen for stage, (fired, seen) in self.cw_counts.items() if seen}


def save_checkpoint(run_dir: Path, setup: Setup, state: TrainerState, optimizer) -> None:
    """Student + projections + optimizer tensors as safetensors (no pickles), the scalar state
    as JSON metadata of the same file, and a checksum over both; written to a temporary name,
    synced and renamed (core.io). Then the readable mirror `trainer_state.json`."""
    tensors = _weights(setup)
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        tensors.update(
            {f"optim.{index}.{k}": torch.as_tensor(v) for k, v in values.items() if v is not None}
        )  # SGD without momentum keeps no buffer
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    payload = {**dataclasses.asdict(state), "optimizer_param_groups": optim["param_groups"]}
    text = json.dumps(payload)
    metadata = {STATE_KEY: text, CHECKSUM_KEY: checkpoint_digest(tensors, text)}
    atomic_write_bytes(run_dir / CHECKPOINT, save(tensors, metadata=metadata))
    write_json(run_dir / TRAINER_STATE, payload)


def checkpoint_digest(tensors: Mapping[str, torch.Tensor], state: str) -> str:
    """sha256 over the trainer state's JSON and every tensor's name, dtype, shape and bytes:
    any changed byte of the file (data, names, offsets, state) changes it or fails the load."""
    sha = hashlib.sha256(state.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        sha.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return sha.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer state payload, tensors) of a checkpoint, its checksum verified. A truncated,
    unreadable or changed file raises `CheckpointCorruptError` naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' own error type, OSError: the file is unreadable
        raise CheckpointCorruptError(unreadable(path, exc, what="checkpoint")) from None
    text, recorded = metadata.get(STATE_KEY), metadata.get(CHECKSUM_KEY)
    if text is None or recorded is None:
        raise CheckpointCorruptError(
            f"{path}: checkpoint has no madcache trainer state or "
            "checksum; it was not written by `madcache train` (or by "
            "an older version): train into a new --out"
        )
    if checkpoint_digest(tensors, text) != recorded:
        raise CheckpointCorruptError(
            f"{path}: checkpoint checksum mismatch (its bytes changed "
            "since it was written); restore it, or pass --overwrite to "
            "train the run again"
        )
    return json.loads(text), tensors


def load_checkpoint(run_dir: Path, setup: Setup, optimizer) -> TrainerState:
    """Restore what `save_checkpoint` wrote (checksum verified); returns the trainer state."""
    payload, tensors = read_checkpoint(run_dir / CHECKPOINT)
    setup.student.load_state_dict(_prefixed(tensors, "student."))
    setup.projections.load_state_dict(_prefixed(tensors, "projections."))
    groups = payload.pop("optimizer_param_groups")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _prefixed(tensors, "optim.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    if payload["stage"] != "done":
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    return TrainerState(**payload)


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- select = best
# Early stopping without stopping: the run trains all its steps, validating every `eval_every`
# task steps; when a validation beats every earlier one, the student + projections are written
# to `selected.safetensors`, and at the end of the task stage the run continues with those
# weights (what it saves, evaluates and reports). A resumed run validates the same steps with
# the same weights, so it rewrites the same file and ends where an uninterrupted run ends.

SELECTED = "selected.safetensors"
SELECTED_KEY = "madcache.selected"


def best_step(history: list[dict[str, Any]], metric: str | None) -> dict[str, Any] | None:
    """The task step with the highest validated `metric` (the earliest on a tie), as
    {"step", "score", "metric", "curve": [[step, score], ...]}; None before any validation.
    `metric` None: the first metric the validations report."""
    validated = [h for h in history if h["stage"] == TASK and "eval" in h]
    if not validated:
        return None
    name = metric or next(iter(validated[0]["eval"]))
    if name not in validated[0]["eval"]:
        raise ConfigError(
            f"select_metric: the eval split reports {', '.join(validated[0]['eval'])}, not '{name}'"
        )
    curve = [[h["step"], h["eval"][name]] for h in validated]
    step, score = max(curve, key=lambda point: (point[1], -point[0]))
    return {"metric": name, "step": step, "score": score, "curve": curve}


def keep_if_best(run_dir: Path, setup: Setup, state: TrainerState) -> None:
    """select = best, after a task-stage validation: write the weights when this step is the
    best so far (rank 0; the other ranks wait for the file)."""
    if setup.config.select != "best" or state.stage != TASK:
        return
    best = best_step(state.history, setup.config.select_metric)
    with main_first() as where:
        if where.is_main and best is not None and best["step"] == state.stage_step:
            tensors = _weights(setup)
            text = json.dumps({"step": best["step"], "score": best["score"]})
            metadata = {SELECTED_KEY: text, CHECKSUM_KEY: checkpoint_digest(tensors, text)}
            atomic_write_bytes(run_dir / SELECTED, save(tensors, metadata=metadata))


def restore_selected(run_dir: Path, setup: Setup, state: TrainerState) -> None:
    """select = best, after the task stage: load the best validated step's weights into the
    student and projections. The file must hold the step the run's validations chose."""
    if setup.config.select != "best":
        return
    best = best_step(state.history, setup.config.select_metric)
    if best is None:
        return
    path = run_dir / SELECTED
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' own error type, OSError: unreadable or missing
        raise CheckpointCorruptError(unreadable(path, exc, what="selected weights")) from None
    text = metadata.get(SELECTED_KEY, "{}")
    step = json.loads(text).get("step")
    if step != best["step"] or checkpoint_digest(tensors, text) != metadata.get(CHECKSUM_KEY):
        raise CheckpointCorruptError(
            f"{path}: holds task step {step} (or bytes changed since "
            f"it was written), but the run's validations chose step "
            f"{best['step']}; pass --overwrite to train the run again"
        )
    setup.student.load_state_dict(_prefixed(tensors, "student."))
    setup.projections.load_state_dict(_prefixed(tensors, "projections."))


def _weights(setup: Setup) -> dict[str, torch.Tensor]:
    tensors = {f"student.{k}": v for k, v in setup.student.state_dict().items()}
    tensors.update({f"projections.{k}": v for k, v in setup.projections.state_dict().items()})
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
