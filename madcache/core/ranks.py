"""`Ranks`: this process's place in a job of several processes (rank R of world size W).

Extraction finds it from flags or the launcher's environment (`extraction.distributed`), training
from torch's process group (`train.distributed`); one process is rank 0 of 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    """Rank `rank` of `world_size` processes, `local_rank` on its machine (its GPU). `launcher`
    says where extraction found the rank: single (one process, or not recorded), flags
    (--rank/--world-size), torchrun or slurm-array."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes what the job writes once."""
        return self.rank == 0

    @property
    def torchrun(self) -> bool:
        return self.launcher == "torchrun"

    def owns(self, shard: int) -> bool:
        """Rank R of W owns the shards with `index % W == R`."""
        return shard % self.world_size == self.rank

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.launcher})"
