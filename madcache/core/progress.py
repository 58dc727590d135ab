"""`progress`: one progress display for extract, train and sweep.

On a terminal (stderr is a TTY) it is tqdm's bar, as before. Without one (a Slurm batch log, a
sweep's sweep.log, `nohup ... > log`) a bar would be a stream of carriage returns, so it prints
one plain line every `MADCACHE_PROGRESS_EVERY` (default `60s`; `30s`, or a number of units such
as `500` for every 500 steps):

    train (mad): 1200/5000 steps (24%), loss 0.4312, 211.3 examples/s, ETA 0:18:02

and a last line when it closes (if it printed any). `disable=True` shows nothing either way, and
so does every display opened inside `shown(False)` (`--no-progress` of a command whose library
function takes no `progress` argument, e.g. `madcache train`).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

from madcache.core.config import setting

EVERY_ENV = "MADCACHE_PROGRESS_EVERY"
DEFAULT_EVERY = "60s"
PROGRESS_HELP = "Show progress on stderr."

_SHOWN: ContextVar[bool] = ContextVar("madcache_progress_shown", default=True)


@dataclass(frozen=True)
class ProgressSetting:
    """The `--progress/--no-progress` flag of a command whose own config has no such field
    (a config recorded with its results, where a display setting does not belong)."""

    progress: bool = setting(True, help=PROGRESS_HELP)


@contextmanager
def shown(enabled: bool) -> Iterator[None]:
    """Progress displays opened inside are shown only when `enabled`."""
    token = _SHOWN.set(enabled)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def progress(
    *,
    total: int | None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    per_unit: int | None = None,
    per_unit_name: str = "examples",
    stream: TextIO | None = None,
) -> Any:
    """A tqdm bar on a TTY, else a `LineProgress`. `per_unit`: examples per unit (a training
    step's batch size), so that the lines give examples/s as well."""
    stream = sys.stderr if stream is None else stream
    disable = disable or not _SHOWN.get()
    if not disable and _isatty(stream):
        from tqdm.auto import tqdm

        return tqdm(
            total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True
        )
    return LineProgress(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=disable,
        per_unit=per_unit,
        per_unit_name=per_unit_name,
        stream=stream,
        every=os.environ.get(EVERY_ENV, DEFAULT_EVERY),
    )


class LineProgress:
    """tqdm's `update` / `set_postfix` / `close` (and `with`), printing a plain line every
    `every` ("60s": seconds, "500": units)."""

    def __init__(
        self,
        *,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        disable: bool = False,
        per_unit: int | None = None,
        per_unit_name: str = "examples",
        stream: TextIO,
        every: str = DEFAULT_EVERY,
        clock=time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.per_unit, self.per_unit_name = disable, per_unit, per_unit_name
        self.stream, self.clock = stream, clock
        self.every_s, self.every_n = _parse_every(every)
        self.started = self.last_time = clock()
        self.start_n = self.last_n = initial
        self.postfix: dict[str, Any] = {}
        self.printed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = self.clock()
        due = (self.every_n and self.n - self.last_n >= self.every_n) or (
            self.every_s is not None and now - self.last_time >= self.every_s
        )
        if due:
            self._print(now)

    def close(self) -> None:
        if not self.disable and self.printed and self.n != self.last_n:
            self._print(self.clock())

    def line(self, now: float) -> str:
        """`desc: n/total unit (p%), postfix, rate, ETA`."""
        done = self.n - self.start_n
        seconds = max(now - self.started, 1e-9)
        rate = done / seconds
        parts = [f"{self.n}/{self.total} {self.unit}s" if self.total else f"{self.n} {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(
            f"{rate * (self.per_unit or 1):.1f} "
            f"{self.per_unit_name if self.per_unit else self.unit + 's'}/s"
        )
        if self.total and rate > 0:
            left = max(self.total - self.n, 0) / rate
            parts.append(f"ETA {dt.timedelta(seconds=round(left))}")
        return f"{self.desc}: " + ", ".join(parts)

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.printed, self.last_time, self.last_n = True, now, self.n


def _parse_every(text: str) -> tuple[float | None, int | None]:
    """ "60s" -> (60.0, None); "500" -> (None, 500). A bad value falls back to the default."""
    value = str(text).strip().lower()
    try:
        if value.endswith("s"):
            return max(float(value[:-1]), 0.0), None
        return None, max(int(value), 1)
    except ValueError:
        return 60.0, None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
