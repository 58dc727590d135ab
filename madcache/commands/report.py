"""`madcache report RUNS_DIR`: tables (Markdown, CSV), per-run provenance and plots."""

from __future__ import annotations

import click


@click.command()
@click.argument("runs_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", help="Where to write report.md / report.csv / runs.csv / plots "
              "(default: RUNS_DIR).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def report(runs_dir: str, out: str | None, no_plots: bool) -> None:
    """Aggregate every metrics.json under RUNS_DIR: mean ± std over seeds per cell."""
    from madcache.experiments.report import build_report

    result = build_report(runs_dir, out=out, plots=not no_plots)
    click.echo(result["markdown"])
    click.echo("wrote " + ", ".join(str(p) for p in result["files"]))
