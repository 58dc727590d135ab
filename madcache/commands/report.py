"""`madcache report RUNS_DIR`: tables (Markdown, CSV), paired differences to the baseline,
per-run provenance and plots."""

from __future__ import annotations

import click

from madcache.train.tracking import TRACKERS


@click.command()
@click.argument("runs_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", help="The folder to write report.md / report.csv / paired.csv / runs.csv "
              "/ plots into (default: RUNS_DIR); never inside a dataset root of the runs.")
@click.option("--baseline", metavar="METHOD", help="The method every other one is paired with, "
              "seed by seed (default: baseline; when given, it must have complete runs).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--report-to", type=click.Choice(TRACKERS.names()), default="none",
              show_default=True, help="Also log the tables (report.md, the CSVs) and plots as "
              "artifacts of a new run of this tracker, opened in the --out folder (as "
              "`train --report-to`: tensorboard, wandb, mlflow).")
def report(runs_dir: str, out: str | None, baseline: str | None, no_plots: bool,
           report_to: str) -> None:
    """Aggregate every metrics.json under RUNS_DIR: mean ± std over seeds per cell, and each
    method's paired difference to the baseline with 95% intervals and its power (MDE)."""
    from madcache.experiments.report import build_report
    from madcache.train.tracking import check_tracker

    check_tracker(report_to)
    result = build_report(runs_dir, out=out, plots=not no_plots, baseline=baseline)
    click.echo(result["markdown"])
    click.echo("wrote " + ", ".join(str(p) for p in result["files"]))
    if report_to != "none":
        from pathlib import Path

        from madcache.train.tracking import open_tracker

        files = [Path(p) for p in result["files"] if Path(p).is_file()]
        tracker = open_tracker(report_to, Path(out or runs_dir), start_step=0)
        try:
            tracker.artifacts(files)
        finally:
            tracker.close()
        click.echo(f"logged {len(files)} file(s) to {report_to}")
