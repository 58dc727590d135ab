"""Experiment tracking (`--report-to`): scalars of a run as it trains, for watching it live.

metrics.json stays the source of truth; a tracker only mirrors it. Tags are `<stage>/<name>` per
step (loss terms, lr, CW firing rate, gradient norm, data wait) and `eval/<split>/<metric>`; the
step axis is the global optimizer step. TensorBoard logs go to `<run>/tensorboard/`; a resumed
run purges the events after its checkpoint, so the curves do not fork.

Adding a tracker = a class with `scalars` and `close`, and one `TRACKERS.register` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Protocol

from madcache.core.errors import ConfigError
from madcache.core.registry import Registry

TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    def scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """`--report-to none`: metrics.json only."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """`torch.utils.tensorboard` event files in `<run>/tensorboard/`."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        """`start_step`: the global step of the checkpoint a resumed run starts from; events
        logged after it by the interrupted run are purged (they are logged again)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--report-to tensorboard needs the tensorboard package: "
                              "pip install 'madcache[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                    purge_step=start_step + 1 if start_step else None)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


TrackerFactory = Callable[..., Tracker]
TRACKERS: Registry[TrackerFactory] = Registry("tracker")
TRACKERS.register("none", lambda run_dir, *, start_step: NoTracker())
TRACKERS.register("tensorboard", TensorBoardTracker)


def open_tracker(name: str, run_dir: Path, *, start_step: int) -> Tracker:
    """The registered tracker `name` for `run_dir`, continuing from `start_step`."""
    return TRACKERS.get(name)(run_dir, start_step=start_step)
