"""Checkpoints: student + projections + optimizer tensors as safetensors (no pickles), with the
scalar trainer state as JSON in the same file's metadata, so one rename commits both (a kill
never pairs new weights with an old step). `trainer_state.json` mirrors that state for people
and tools. No RNG state is needed: every random draw of a step (dropout, AF masks)
is seeded from (seed, stage, step, rank, micro-batch), and the data order from (seed, stage,
epoch), so a resumed run continues exactly where the checkpoint left off."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from madcache.core.errors import ConfigError
from madcache.core.io import write_json
from madcache.train.setup import Setup

CHECKPOINT = "checkpoint.safetensors"
TRAINER_STATE = "trainer_state.json"
STATE_KEY = "madcache.trainer_state"


@dataclass
class TrainerState:
    """Where training is: resumable from `checkpoint.safetensors` (tensors + this, as metadata)."""

    stage: str = "af"                 # "af" | "task" | "done"
    stage_step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1               # processes that trained up to this state
    precision: str = "fp32"           # the resolved --precision
    cw_counts: dict[str, list[int]] = field(default_factory=dict)   # stage -> [fired, seen]

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
    as JSON metadata of the same file; written to a temp name, then renamed. Then the mirror."""
    tensors = {f"student.{k}": v for k, v in setup.student.state_dict().items()}
    tensors.update({f"projections.{k}": v for k, v in setup.projections.state_dict().items()})
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in values.items()})
    payload = {**dataclasses.asdict(state), "optimizer_param_groups": optim["param_groups"]}
    tmp = run_dir / (CHECKPOINT + ".tmp")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={STATE_KEY: json.dumps(payload)})
    tmp.replace(run_dir / CHECKPOINT)
    write_json(run_dir / TRAINER_STATE, payload)


def load_checkpoint(run_dir: Path, setup: Setup, optimizer) -> TrainerState:
    """Restore what `save_checkpoint` wrote; returns the trainer state."""
    with safe_open(str(run_dir / CHECKPOINT), framework="pt") as handle:
        payload = json.loads(handle.metadata()[STATE_KEY])
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
    return TrainerState(**payload)


# settings that may change on --resume: they change where and how fast a run trains, not what
# it computes (grad_accum splits the same global batch; see docs/training.md)
RESUMABLE_CHANGES = frozenset({"resume", "device", "grad_accum", "prefetch", "report_to",
                               "checkpoint_every"})


def check_resume(saved: dict[str, Any], config: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume with settings that would change the result (`saved` is the run's
    config.json), naming the first one that differs."""
    for key in sorted(set(saved) | set(config)):
        if key in RESUMABLE_CHANGES or saved.get(key) == config.get(key):
            continue
        raise ConfigError(f"--resume: '{key}' is {config.get(key)!r} but the run in {run_dir} "
                          f"was trained with {saved.get(key)!r}; resume with the same settings "
                          "or train into a new --out")


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
