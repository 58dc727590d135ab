"""Many extraction processes, one cache: which shards a rank owns, and where its rank comes from.

The shard plan is deterministic, so rank R of W owns the shards with `index % W == R` and ranks
never talk while extracting (each claims and commits its own shards in the cache). The rank is
`--rank/--world-size`, else torchrun's `RANK`/`WORLD_SIZE`, else a Slurm job array's
`SLURM_ARRAY_TASK_ID`/`SLURM_ARRAY_TASK_COUNT`, else a single process. Under torchrun the ranks
also join a gloo process group, only to wait for each other before rank 0 finishes the cache.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

from madcache.core.errors import ConfigError
from madcache.core.ranks import Ranks

# The barrier before `finish` waits for the slowest rank: ranks may end hours apart.
BARRIER_TIMEOUT = dt.timedelta(days=7)


def resolve_ranks(
    rank: int | None = None, world_size: int | None = None, env: Mapping[str, str] | None = None
) -> Ranks:
    """The rank of this process; see the module docstring for the order of the sources."""
    env = os.environ if env is None else env
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ConfigError("give --rank and --world-size together")
        return _checked(rank, world_size, int(env.get("LOCAL_RANK", 0)), "flags", "--rank")
    if "RANK" in env and "WORLD_SIZE" in env:
        return _checked(
            _int(env, "RANK"),
            _int(env, "WORLD_SIZE"),
            _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            "torchrun",
            "RANK",
        )
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        return _checked(
            _int(env, "SLURM_ARRAY_TASK_ID") - first,
            _int(env, "SLURM_ARRAY_TASK_COUNT"),
            0,
            "slurm-array",
            "SLURM_ARRAY_TASK_ID",
        )
    return Ranks()


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _checked(rank: int, world_size: int, local_rank: int, launcher: str, name: str) -> Ranks:
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(
            f"{name}: rank {rank} is outside 0..{world_size - 1} (world size "
            f"{world_size}); a Slurm array should be --array=0-{world_size - 1}"
        )
    return Ranks(rank, world_size, local_rank, launcher)


def rank_device(device: str, ranks: Ranks) -> str:
    """`cuda` means this rank's GPU, `cuda:LOCAL_RANK`; an explicit `cuda:N` is kept."""
    return f"cuda:{ranks.local_rank}" if device == "cuda" and ranks.world_size > 1 else device


class ProcessGroup:
    """The torchrun ranks of one extraction (gloo: a barrier needs no GPU)."""

    def __init__(self, owned: bool) -> None:
        self.owned = owned

    @classmethod
    def join(cls, ranks: Ranks) -> ProcessGroup | None:
        """Join (or reuse) the default process group under torchrun; None otherwise."""
        if not ranks.torchrun or ranks.world_size == 1:
            return None
        import torch.distributed as dist

        if dist.is_initialized():
            return cls(owned=False)
        dist.init_process_group(
            "gloo", rank=ranks.rank, world_size=ranks.world_size, timeout=BARRIER_TIMEOUT
        )
        return cls(owned=True)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
