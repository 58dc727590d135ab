"""Data-parallel training with PyTorch's own engine: DDP under `torchrun` (docs/training.md).

`torchrun --nproc-per-node N -m madcache train ...` starts N processes with RANK / WORLD_SIZE /
LOCAL_RANK set; `init_distributed` joins their process group (NCCL on CUDA, gloo on the CPU). A
plain `madcache train` is one process and none of this does anything.

What makes N processes train like one (docs/training.md, "Scaling up"):
- `batch_size` is the *global* batch: every step's rows are split across the ranks (and each
  rank's share into `grad_accum` micro-batches), each micro-batch loss is weighted by its share of
  the global batch, and DDP averages the gradients, so the update is the one process's update;
- the trainer's `StageLoss` (train/loop.py) puts the student and the projections in one module
  whose forward computes the stage's whole loss (task terms, distillation, AF's
  `pretrain_losses`); `wrap` puts it under DDP, which so synchronises every gradient of every
  stage;
- rank 0 alone writes checkpoints, metrics.json, the split file and logs; every rank reads them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from madcache.core.errors import ConfigError
from madcache.core.ranks import Ranks


def current() -> Ranks:
    """The process group this process is in (one process when none was started)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return Ranks()
    return Ranks(
        torch_dist.get_rank(),
        torch_dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", torch_dist.get_rank())),
    )


def init_distributed(device: str) -> bool:
    """Join the process group torchrun describes in the environment (env://). Returns True when
    this call started it (the caller then ends it with `shutdown`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch_dist.is_initialized():
        return False
    cuda = device.startswith("cuda")
    local = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if device not in ("cpu", "cuda", local):
        raise ConfigError(
            f"under torchrun --device is auto or 'cuda' (each process takes the "
            f"GPU of its LOCAL_RANK) or 'cpu', got {device!r}"
        )
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch_dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shutdown(started: bool) -> None:
    if started and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[Ranks]:
    """Rank 0 runs the block first (e.g. writes a file), the other ranks after it."""
    where = current()
    if where.enabled and not where.is_main:
        torch_dist.barrier()
    yield where
    if where.enabled and where.is_main:
        torch_dist.barrier()


def wrap(module: nn.Module, where: Ranks, device: str) -> nn.Module:
    """`module` under DDP when there are several processes. `find_unused_parameters`: each stage
    uses only some heads (the ITM/MLM heads in AF, the task head and projections in the task)."""
    if not where.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def sync_context(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Accumulate gradients locally (no all-reduce) unless `sync`: the last micro-batch syncs."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def sum_across(values: dict[str, float], where: Ranks) -> dict[str, float]:
    """Per-key sums of every rank's `values` (keys may differ between ranks)."""
    if not where.enabled:
        return dict(values)
    gathered: list[Any] = [None] * where.world_size
    torch_dist.all_gather_object(gathered, values)
    total: dict[str, float] = {}
    for part in gathered:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return total


def gather(value: Any, where: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order (a one-element list in one process)."""
    if not where.enabled:
        return [value]
    gathered: list[Any] = [None] * where.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


def contiguous_share(items: Sequence[Any], where: Ranks) -> Sequence[Any]:
    """This rank's contiguous part of `items` (parts differ in size by at most one)."""
    size, extra = divmod(len(items), where.world_size)
    start = where.rank * size + min(where.rank, extra)
    return items[start : start + size + (where.rank < extra)]
