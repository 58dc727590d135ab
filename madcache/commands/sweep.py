"""`madcache sweep PIPELINE.toml`: every run of a pipeline's grid that is not complete yet."""

from __future__ import annotations

import click

from madcache.core.errors import MadcacheError
from madcache.train.tracking import TRACKERS


class SweepFailed(MadcacheError):
    """Some runs failed (the others completed; rerun the sweep to retry only the failed)."""


@click.command()
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--jobs", "-j", type=int, default=None,
              help="Runs at once (processes). Default 1, or one per GPU slot with --gpus.")
@click.option("--gpus", metavar="IDS", help="GPUs to place runs on, e.g. 0,1,2,3: each job gets "
              "one GPU slot (CUDA_VISIBLE_DEVICES) and device cuda.")
@click.option("--jobs-per-gpu", type=int, default=1, show_default=True,
              help="Small jobs sharing one GPU (slots per GPU).")
@click.option("--report-to", type=click.Choice(TRACKERS.names()),
              help="Also log each training run's scalars, e.g. to TensorBoard "
                   "(<run>/tensorboard/).")
@click.option("--dry-run", is_flag=True, help="List the runs and their state; run nothing.")
@click.option("--only", metavar="REGEX", help="Only runs whose name (dataset/student/method/"
              "k<K>/seed<S>) matches.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="NAME=VALUE fills ${NAME} placeholders; other keys override settings "
                   "(e.g. seeds=[0,1], train.epochs=2).")
def sweep(pipeline: str, jobs: int | None, gpus: str | None, jobs_per_gpu: int,
          report_to: str | None, dry_run: bool, only: str | None,
          overrides: tuple[str, ...]) -> None:
    """Train and evaluate every missing run of a pipeline (methods x shots x seeds x students)."""
    from madcache.experiments.sweep import load_sweep, run_sweep

    config = load_sweep(pipeline, overrides)
    result = run_sweep(config, jobs=jobs, only=only, dry_run=dry_run,
                       gpus=gpus.split(",") if gpus else None, jobs_per_gpu=jobs_per_gpu,
                       report_to=report_to)
    if dry_run:
        for spec in result.planned:
            click.echo(f"{result.states[spec.run_dir]:>9}  {spec.name}")
    click.echo(f"{len(result.planned)} runs: {len(result.skipped)} complete already, "
               f"{len(result.ran)} ran, {len(result.failed)} failed"
               + (f"; zero-shot: {len(result.zero_shot)} result(s)" if result.zero_shot else ""))
    for spec, error in result.failed:
        click.echo(f"FAILED {spec.name}: {error}", err=True)
    if result.failed:
        raise SweepFailed(f"{len(result.failed)} run(s) failed; rerun the same command to retry "
                          "only the missing runs")
