"""`progress`: tqdm on a TTY; without one, a plain line every N seconds or units (step, loss,
examples/s, ETA) that a batch log can read."""

from __future__ import annotations

import io

from madcache.core.progress import LineProgress, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_n_seconds_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(
        total=100, desc="task (mad)", unit="step", per_unit=16, stream=out, every="30s", clock=clock
    )
    for _ in range(50):
        clock.now += 1.0
        bar.set_postfix(loss="0.5000")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "task (mad): 30/100 steps (30%), loss 0.5000, 16.0 examples/s, ETA 0:01:10"
    assert lines[1].startswith("task (mad): 50/100 steps (50%)") and len(lines) == 2


def test_lines_every_n_units_and_nothing_when_disabled_or_quiet():
    out = io.StringIO()
    with LineProgress(total=None, desc="sweep", unit="run", stream=out, every="2") as bar:
        for _ in range(5):
            bar.update(1)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "sweep: 2 runs",
        "sweep: 4 runs",
        "sweep: 5 runs",
    ]
    quiet = io.StringIO()
    with LineProgress(total=3, desc="x", unit="step", stream=quiet, every="60s") as bar:
        bar.update(3)  # a short run under the interval prints nothing
    with progress(total=3, desc="x", disable=True, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_a_tty_gets_tqdm(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    bar = progress(total=3, desc="x", stream=Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress(total=3, desc="x", stream=io.StringIO()), LineProgress)
