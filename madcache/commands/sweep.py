"""`madcache sweep PIPELINE.toml`: every run of a pipeline's grid that is not complete yet."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.core.errors import MadcacheError
from madcache.experiments.config import SweepRunConfig


class SweepFailed(MadcacheError):
    """Some runs failed (the others completed; rerun the sweep to retry only the failed)."""


@click.command()
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@config_options(SweepRunConfig)
def sweep(pipeline: str, **flags: Any) -> None:
    """Train and evaluate every missing run of a pipeline (methods x shots x seeds x students)."""
    from madcache.experiments.executors import make_executor
    from madcache.experiments.sweep import load_sweep, run_sweep

    options = build_config(SweepRunConfig, flags)
    config = load_sweep(pipeline, options.overrides)
    cluster = make_executor(options.executor, config, options.slurm_overrides())
    result = run_sweep(
        config,
        jobs=options.jobs,
        only=options.only,
        dry_run=options.dry_run,
        gpus=options.gpu_ids(),
        jobs_per_gpu=options.jobs_per_gpu,
        report_to=options.report_to,
        executor=cluster,
        progress=options.progress,
    )
    if options.dry_run:
        for spec in result.planned:
            click.echo(f"{result.states[spec.run_dir]:>9}  {spec.name}")
        if cluster is not None:
            pending = [s for s in result.planned if result.states[s.run_dir] != "complete"]
            click.echo(cluster.preview(config, pending))
    if result.submitted:
        click.echo(
            f"submitted {len(result.submitted)} run(s) as Slurm job "
            f"{str(result.submitted[0].job_id).split('_')[0]}; logs in "
            f"{cluster.folder(config)} and each run's sweep.log; rerun this command "
            "to see what is complete"
        )
    click.echo(
        f"{len(result.planned)} runs: {len(result.skipped)} complete already, "
        f"{len(result.ran)} ran, {len(result.failed)} failed"
        + (f"; zero-shot: {len(result.zero_shot)} result(s)" if result.zero_shot else "")
    )
    for spec, error in result.failed:
        click.echo(f"FAILED {spec.name}: {error}", err=True)
    if result.failed:
        raise SweepFailed(
            f"{len(result.failed)} run(s) failed; rerun the same command to retry "
            "only the missing runs"
        )
