"""`madcache demo study`: baseline, MD and MAD at convergence, with the seeds the SM comparison
needs (madcache/demo/study.py)."""

from __future__ import annotations

import click

from madcache.commands.options import config_options
from madcache.demo.study import StudyConfig


@click.command("study")
@config_options(StudyConfig)
def demo_study(**values) -> None:
    """Recipe (lr) chosen on the baseline with dev early stopping -> regime check at convergence
    -> baseline / MD / MAD x seeds (grown until the SM paired half-width reaches the target),
    each evaluated on val and SM with its dev-selected step -> OUT/study/study.md. Rerunning
    finishes only what is missing."""
    from madcache.demo.study import run_study, study_markdown

    config = StudyConfig.from_dict({k: v for k, v in values.items() if v is not None})
    summary = run_study(config, log=lambda line: click.echo(line, err=True))
    click.echo(study_markdown(summary))
    click.echo(f"study: {config.out / 'study' / 'study.md'}  (wall time {summary['wall_s']} s)")
