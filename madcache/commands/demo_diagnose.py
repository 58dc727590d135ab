"""`madcache demo diagnose`: the ablation ladder on the demo with learning curves and probes."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("diagnose")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="The demo folder of `madcache demo run` (results go to "
                                      "OUT/diagnosis).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Training runs at once.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_diagnose(out: Path, jobs: int, quiet: bool) -> None:
    """baseline, md, md-ts, md-ts-cw, mad-af-plain, mad x 2 seeds at the demo's shot size, with
    learning curves, text-side probes and the task-start gradients of each term. Prints the
    table; writes diagnosis.json, diagnosis.md and curves.png under OUT/diagnosis."""
    from madcache.demo.diagnose import diagnosis_markdown, run_diagnosis

    summary = run_diagnosis(out, jobs=jobs, progress=not quiet,
                            log=lambda line: click.echo(line, err=True))
    click.echo(diagnosis_markdown(summary))
    click.echo(f"curves: {out / 'diagnosis' / 'curves.png'}")
