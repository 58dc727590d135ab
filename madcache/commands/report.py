"""`madcache report RUNS_DIR`: tables (Markdown, CSV), paired differences to the baseline,
per-run provenance and plots."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.experiments.config import ReportConfig


@click.command()
@click.argument("runs_dir", type=click.Path(exists=True, file_okay=False))
@config_options(ReportConfig)
def report(runs_dir: str, **flags: Any) -> None:
    """Aggregate every metrics.json under RUNS_DIR: mean ± std over seeds per cell, and each
    method's paired difference to the baseline with 95% intervals and its power (MDE)."""
    from madcache.experiments.report import build_report
    from madcache.train.tracking import check_tracker

    config = build_config(ReportConfig, flags)
    check_tracker(config.report_to)
    result = build_report(runs_dir, out=config.out, plots=config.plots, baseline=config.baseline)
    click.echo(result["markdown"])
    click.echo("wrote " + ", ".join(str(p) for p in result["files"]))
    if config.report_to != "none":
        from pathlib import Path

        from madcache.train.tracking import open_tracker

        files = [Path(p) for p in result["files"] if Path(p).is_file()]
        tracker = open_tracker(config.report_to, Path(config.out or runs_dir), start_step=0)
        try:
            tracker.artifacts(files)
        finally:
            tracker.close()
        click.echo(f"logged {len(files)} file(s) to {config.report_to}")
