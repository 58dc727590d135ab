"""`madcache demo run`: the whole pipeline on the demo world (what `make demo` runs). Flags:
`DemoConfig`'s fields."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.demo.run import DemoConfig


@click.command("run")
@config_options(DemoConfig)
def demo_run(**flags: Any) -> None:
    """World -> teacher -> student -> caches -> regions -> regime check (it picks the shot
    size) -> sweep (baseline/MD/MAD x seeds, standard + SM, zero-shot) -> report. Rerunning
    reuses everything already done."""
    from madcache.demo.run import run_demo

    config = build_config(DemoConfig, flags, noun="demo option")
    result = run_demo(config, log=lambda line: click.echo(line, err=True))
    paths = result["paths"]
    click.echo("")
    click.echo(result["report"]["markdown"])
    click.echo(f"stage times (s): {result['timings']}")
    click.echo(
        f"report: {paths.report / 'report.md'}  (CSV: report.csv, runs.csv; plots: "
        f"{', '.join(p.name for p in result['report']['files'] if p.suffix == '.png')})"
    )
