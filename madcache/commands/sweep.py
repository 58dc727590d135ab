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
              help="Also log each training run's scalars to a tracker: tensorboard "
                   "(<run>/tensorboard/), wandb (<run>/wandb/) or mlflow (MLFLOW_TRACKING_URI, "
                   "else <run>/mlruns).")
@click.option("--dry-run", is_flag=True, help="List the runs and their state; run nothing.")
@click.option("--only", metavar="REGEX", help="Only runs whose name (dataset/student/method/"
              "k<K>/seed<S>) matches.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="NAME=VALUE fills ${NAME} placeholders; other keys override settings "
                   "(e.g. seeds=[0,1], train.epochs=2).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local",
              show_default=True, help="local: processes here; slurm: one job-array task per "
                                      "run (submitit), resources from [slurm] or the flags below.")
@click.option("--slurm-partition", help="Slurm partition [pipeline slurm.partition].")
@click.option("--slurm-gpus", "gpus_per_node", type=click.IntRange(min=0),
              help="GPUs per run [slurm.gpus_per_node, 1].")
@click.option("--slurm-cpus", "cpus_per_task", type=click.IntRange(min=1),
              help="CPUs per run [slurm.cpus_per_task, 8].")
@click.option("--slurm-time", "time_min", type=click.IntRange(min=1),
              help="Minutes per run before requeue [slurm.time_min, 240].")
@click.option("--slurm-account", "account", help="Slurm account [slurm.account].")
@click.option("--slurm-qos", "qos", help="Slurm QOS [slurm.qos].")
def sweep(pipeline: str, jobs: int | None, gpus: str | None, jobs_per_gpu: int,
          report_to: str | None, dry_run: bool, only: str | None, overrides: tuple[str, ...],
          executor: str, slurm_partition: str | None, **slurm: int | str | None) -> None:
    """Train and evaluate every missing run of a pipeline (methods x shots x seeds x students)."""
    from madcache.experiments.executors import make_executor
    from madcache.experiments.sweep import load_sweep, run_sweep

    config = load_sweep(pipeline, overrides)
    cluster = make_executor(executor, config, {"partition": slurm_partition, **slurm})
    result = run_sweep(config, jobs=jobs, only=only, dry_run=dry_run,
                       gpus=gpus.split(",") if gpus else None, jobs_per_gpu=jobs_per_gpu,
                       report_to=report_to, executor=cluster)
    if dry_run:
        for spec in result.planned:
            click.echo(f"{result.states[spec.run_dir]:>9}  {spec.name}")
        if cluster is not None:
            pending = [s for s in result.planned if result.states[s.run_dir] != "complete"]
            click.echo(cluster.preview(config, pending))
    if result.submitted:
        click.echo(f"submitted {len(result.submitted)} run(s) as Slurm job "
                   f"{str(result.submitted[0].job_id).split('_')[0]}; logs in "
                   f"{cluster.folder(config)} and each run's sweep.log; rerun this command "
                   "to see what is complete")
    click.echo(f"{len(result.planned)} runs: {len(result.skipped)} complete already, "
               f"{len(result.ran)} ran, {len(result.failed)} failed"
               + (f"; zero-shot: {len(result.zero_shot)} result(s)" if result.zero_shot else ""))
    for spec, error in result.failed:
        click.echo(f"FAILED {spec.name}: {error}", err=True)
    if result.failed:
        raise SweepFailed(f"{len(result.failed)} run(s) failed; rerun the same command to retry "
                          "only the missing runs")
