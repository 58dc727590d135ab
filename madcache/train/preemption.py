"""Stopping cleanly when the cluster asks (docs/training.md, "Preemption and time limits").

Slurm warns a job before it preempts it or its time runs out: SIGTERM, or the signal of
`--signal` (submitit asks for SIGUSR2; SIGUSR1 is the usual one by hand). While a run trains,
`watch_signals` turns those signals into a flag; the loop looks at it between steps, so a step
is never cut in half: at the next step boundary it writes a checkpoint through the verified save
path (train/checkpoint.py) and raises `Preempted`, which the command line turns into exit code
`PREEMPTED_EXIT` (75, EX_TEMPFAIL: "try again"). `--resume` then continues from that step and
ends with the weights and metrics of an uninterrupted run (the loop's reproducibility contract).
Under torchrun every rank's flag is summed with the step's loss parts, so all ranks stop at the
same step even when only one was signalled.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from madcache.core.errors import MadcacheError

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the run stopped with a checkpoint; resume it


class Preempted(MadcacheError):
    """A signal stopped training after a checkpoint was written: rerun with --resume."""

    exit_code = PREEMPTED_EXIT


class StopFlag:
    """Set by a signal; read by the loop between steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def set(self, signum: int, frame=None) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def watch_signals() -> Iterator[StopFlag]:
    """A `StopFlag` set by SIGTERM / SIGUSR1 / SIGUSR2 while the block runs; the previous
    handlers come back afterwards. Off the main thread (where Python cannot set handlers) the
    flag is never set and the signals keep their handlers."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {number: signal.signal(number, flag.set) for number in SIGNALS}
    try:
        yield flag
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
