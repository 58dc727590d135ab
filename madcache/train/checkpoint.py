"""Checkpoints: student + projections + optimizer tensors + RNG states as safetensors (no
pickles), scalar trainer state as JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from madcache.core.io import write_json
from madcache.train.setup import Setup

CHECKPOINT = "checkpoint.safetensors"
TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training is: resumable from `trainer_state.json` + `checkpoint.safetensors`."""

    stage: str = "af"                 # "af" | "task" | "done"
    stage_step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    cw_counts: dict[str, list[int]] = field(default_factory=dict)   # stage -> [fired, seen]

    def count_cw(self, parts: Mapping[str, float]) -> None:
        """Add a step's CW counts (`cw_fired` / `cw_seen` in its loss parts) to its stage."""
        if "cw_seen" in parts:
            counts = self.cw_counts.setdefault(self.stage, [0, 0])
            counts[0] += int(parts["cw_fired"])
            counts[1] += int(parts["cw_seen"])

    def cw_fired(self) -> dict[str, float]:
        """Per stage with confidence weighting: the fraction of training instances (over all
        its steps) where CW fired, i.e. the teacher was more confident than the student."""
        return {stage: fired / seen for stage, (fired, seen) in self.cw_counts.items() if seen}


def save_checkpoint(run_dir: Path, setup: Setup, state: TrainerState, optimizer, generator) -> None:
    """Student + projections + optimizer tensors + RNG states as safetensors (no pickles);
    scalar state as JSON. Written to temp names, then renamed (the JSON last)."""
    tensors = {f"student.{k}": v for k, v in setup.student.state_dict().items()}
    tensors.update({f"projections.{k}": v for k, v in setup.projections.state_dict().items()})
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in values.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    tmp = run_dir / (CHECKPOINT + ".tmp")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(run_dir / CHECKPOINT)
    payload = {**dataclasses.asdict(state), "optimizer_param_groups": optim["param_groups"]}
    write_json(run_dir / TRAINER_STATE, payload)


def load_checkpoint(run_dir: Path, setup: Setup, optimizer, generator) -> TrainerState:
    """Restore what `save_checkpoint` wrote; returns the trainer state."""
    payload = json.loads((run_dir / TRAINER_STATE).read_text())
    tensors = load_file(str(run_dir / CHECKPOINT))
    setup.student.load_state_dict(_prefixed(tensors, "student."))
    setup.projections.load_state_dict(_prefixed(tensors, "projections."))
    groups = payload.pop("optimizer_param_groups")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _prefixed(tensors, "optim.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    if payload["stage"] != "done":
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    return TrainerState(**payload)


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
