"""`madcache report RUNS_DIR`: tables (Markdown, CSV), paired differences to the baseline,
per-run provenance and plots."""

from __future__ import annotations

import click


@click.command()
@click.argument("runs_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", help="The folder to write report.md / report.csv / paired.csv / runs.csv "
              "/ plots into (default: RUNS_DIR); never inside a dataset root of the runs.")
@click.option("--baseline", metavar="METHOD", help="The method every other one is paired with, "
              "seed by seed (default: baseline; when given, it must have complete runs).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def report(runs_dir: str, out: str | None, baseline: str | None, no_plots: bool) -> None:
    """Aggregate every metrics.json under RUNS_DIR: mean ± std over seeds per cell, and each
    method's paired difference to the baseline with 95% intervals and its power (MDE)."""
    from madcache.experiments.report import build_report

    result = build_report(runs_dir, out=out, plots=not no_plots, baseline=baseline)
    click.echo(result["markdown"])
    click.echo("wrote " + ", ".join(str(p) for p in result["files"]))
