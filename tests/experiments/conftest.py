"""The committed demo report (docs/demo-report.md), for tests that recompute its numbers: its
per-seed Q2A table (the only per-seed numbers it has) and the report as printed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

DEMO_REPORT = Path(__file__).resolve().parents[2] / "docs" / "demo-report.md"


@dataclass(frozen=True)
class DemoReport:
    per_seed: dict[str, dict[str, list[float]]]  # split -> method -> q2a of seeds 0, 1, ...
    printed: str  # the section "The report as printed"


@pytest.fixture(scope="session")
def demo_report() -> DemoReport:
    text = DEMO_REPORT.read_text(encoding="utf-8")
    table = text.split("Per run (val Q2A / SM val Q2A):")[1].strip().split("\n\n")[0]
    per_seed: dict[str, dict[str, list[float]]] = {"val": {}, "val_sm": {}}
    for line in table.splitlines()[2:]:  # after the header and its rule
        method, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        pairs = [[float(v) for v in cell.split(" / ")] for cell in cells]
        per_seed["val"][method] = [val for val, _ in pairs]
        per_seed["val_sm"][method] = [sm for _, sm in pairs]
    return DemoReport(per_seed, text.split("## The report as printed")[1])
