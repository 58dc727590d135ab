"""`madcache demo diagnose`: the ablation ladder on the demo with learning curves and probes.
Flags: `DiagnoseConfig`'s fields."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.demo.config import DiagnoseConfig


@click.command("diagnose")
@config_options(DiagnoseConfig)
def demo_diagnose(**flags: Any) -> None:
    """baseline, md, md-ts, md-ts-cw, mad-af-plain, mad x 2 seeds at the demo's shot size, with
    learning curves, text-side probes and the task-start gradients of each term. Prints the
    table; writes diagnosis.json, diagnosis.md and curves.png under OUT/diagnosis."""
    from madcache.demo.diagnose import diagnosis_markdown, run_diagnosis

    config = build_config(DiagnoseConfig, flags)
    summary = run_diagnosis(
        config.out,
        jobs=config.jobs,
        progress=config.progress,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(diagnosis_markdown(summary))
    click.echo(f"curves: {config.out / 'diagnosis' / 'curves.png'}")
