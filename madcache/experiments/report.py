"""Reports: every run under a runs folder, aggregated into the paper's table shape.

Read top-down, a report is four steps, one module each:

1. experiments/runs.py: every run directory's metrics.json (+ config.json) and every zero-shot
   result under the runs folder;
2. experiments/cells.py: cells over seeds, rows (student, method, teachers) x settings
   (evaluated split x shots, e.g. `val k100`, `val_sm full`), one table per (dataset, metric);
   a cell is the mean over seeds with the *sample* standard deviation (ddof = 1) and n. Methods
   of a sweep share seeds and low-shot splits, so each method is paired with the baseline: per
   seed, method - baseline, with its mean, 95% intervals and power: the minimum detectable
   effect at its seed count and the seeds a ±3-point interval needs
   (`madcache.experiments.stats`);
3. experiments/tables.py: report.md (tables, paired tables, zero-shot results), report.csv (one
   row per cell, with the run directories behind it), paired.csv (both intervals and the power
   of each paired cell) and runs.csv (one row per run with its provenance);
4. experiments/plots.py: PNG plots, per (dataset, split, metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from madcache.core.errors import OutputLocationError
from madcache.core.io import (
    atomic_write_text,
    check_output_location,
    refuse_foreign_file,
    starts_with,
)
from madcache.experiments.cells import BASELINE, aggregate, check_baseline, paired_cells
from madcache.experiments.plots import plot_cells
from madcache.experiments.runs import RunRecord, collect_runs, collect_zero_shot
from madcache.experiments.tables import (
    CELL_FIELDS,
    PAIRED_FIELDS,
    REPORT_TITLE,
    RUN_FIELDS,
    cell_rows,
    markdown_report,
    paired_rows,
    run_rows,
    write_csv,
)


def build_report(
    runs_dir: str | Path,
    *,
    out: str | Path | None = None,
    plots: bool = True,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Read every run under `runs_dir` and write report.md, report.csv, paired.csv, runs.csv and
    plots to `out` (default: `runs_dir`). Methods are paired with `baseline` (default "baseline",
    whose absence only omits the paired tables; a name given must have complete runs). Returns
    the Markdown, the cells, the pairings and the written paths."""
    records = collect_runs(runs_dir)
    zero_shot = collect_zero_shot(runs_dir)
    cells = aggregate(records)
    if baseline is not None:
        check_baseline(cells, baseline)
    baseline = baseline or BASELINE
    pairs = paired_cells(cells, baseline)
    out = Path(out if out is not None else runs_dir)
    check_report_location(out, records)
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(cells, records, zero_shot, baseline=baseline)
    atomic_write_text(out / "report.md", markdown)
    write_csv(out / "report.csv", CELL_FIELDS, cell_rows(cells, zero_shot))
    write_csv(out / "paired.csv", PAIRED_FIELDS, paired_rows(cells, pairs))
    write_csv(out / "runs.csv", RUN_FIELDS, run_rows(records))
    images = plot_cells(cells, zero_shot, out, pairs=pairs, baseline=baseline) if plots else []
    return {
        "markdown": markdown,
        "cells": cells,
        "pairs": pairs,
        "records": records,
        "files": [
            out / "report.md",
            out / "report.csv",
            out / "paired.csv",
            out / "runs.csv",
            *images,
        ],
    }


def check_report_location(out: Path, records: Sequence[RunRecord]) -> None:
    """Before anything is written, as every command that writes checks (core.io): the report
    goes into a folder, which may not lie inside, nor contain, the dataset root of a run it
    reads (madcache never writes into a dataset)."""
    if out.exists() and not out.is_dir():
        raise OutputLocationError(f"--out {out} is a file; give a folder for the report")
    refuse_foreign_file(out / "report.md", ours=starts_with(REPORT_TITLE.encode()), what="report")
    roots = sorted({str(r.config["root"]) for r in records if r.config.get("root")})
    check_output_location(out, roots=roots)
