"""`resolve_device`: what `--device` means, in one place for every command (docs/training.md,
"Devices").

`auto` (the default everywhere) is the GPU when there is one and the CPU otherwise:

- under torchrun (WORLD_SIZE > 1) with CUDA: `cuda:LOCAL_RANK`, each process its own GPU;
- with CUDA (a GPU box, a Slurm task with its allocation's GPUs in CUDA_VISIBLE_DEVICES):
  `cuda`, the first visible GPU;
- else `cpu`.

An explicit value (`cpu`, `cuda`, `cuda:N`) always wins, and is checked: a device this machine
does not have is one `ConfigError` line naming the option and what to give instead, not a
traceback from deep inside torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from madcache.core.errors import ConfigError

AUTO = "auto"
_FORM = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(
    value: str | None, *, option: str = "--device", env: Mapping[str, str] | None = None
) -> str:
    """The torch device `value` stands for on this machine ("auto"/None: see the module
    docstring). Raises `ConfigError` for a name torch does not know here or a GPU that is not
    there."""
    import torch

    env = os.environ if env is None else env
    text = AUTO if value is None else str(value).strip().lower()
    cuda = torch.cuda.is_available()
    if text == AUTO:
        if not cuda:
            return "cpu"
        if int(env.get("WORLD_SIZE", "1") or 1) > 1:
            return f"cuda:{int(env.get('LOCAL_RANK', '0') or 0)}"
        return "cuda"
    match = _FORM.match(text)
    if match is None:
        raise ConfigError(
            f"{option}: unknown device {value!r}; use auto (the GPU when there is "
            "one, else the CPU), cpu, cuda or cuda:N"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index is not None:
            raise ConfigError(f"{option}: {value!r} names a CPU index; use cpu")
        return "cpu"
    if not cuda:
        raise ConfigError(
            f"{option} {value}: this machine has no CUDA device (torch sees none); "
            "use --device auto or cpu"
        )
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"{option} {value}: this machine has {torch.cuda.device_count()} "
            f"visible CUDA device(s) (cuda:0..cuda:"
            f"{torch.cuda.device_count() - 1}); use --device auto or one of those"
        )
    return text


def device_kind(device: str | None) -> str:
    """ "cpu" or "cuda" (what decides the numbers a run computes; the GPU's index does not)."""
    return str(device or "cpu").split(":", 1)[0]
