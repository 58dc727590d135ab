"""`madcache demo student`: VL-pretrain the demo student on the demo world's captions."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("student")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Demo world root (holds captions/captions.jsonl and images/).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of the saved student (`--student-option init_from=OUT`).")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Pretraining steps (default: the student's own, 1000).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo_student(data: Path, out: Path, steps: int | None, seed: int, quiet: bool) -> None:
    """MLM + image-text matching on the captions (no task labels); a finished student in OUT
    is kept as is, and refused if it was pretrained with other settings. Every demo method
    starts from it."""
    from madcache.core.io import check_output_location
    from madcache.demo.student import DemoStudentConfig, pretrain_demo_student

    check_output_location(out, roots=[data])
    options = {"seed": seed} if steps is None else {"seed": seed, "steps": steps}
    summary = pretrain_demo_student(DemoStudentConfig(data=data, out=out, **options),
                                    progress=not quiet,
                                    log=lambda line: click.echo(line, err=True))
    first, last = summary["curve"][0], summary["curve"][-1]
    click.echo(f"demo student: {out} ({summary['steps']} steps, {summary['seconds']} s)")
    click.echo(f"held-out MLM {first['mlm']:.3f} -> {last['mlm']:.3f}, ITM {first['itm']:.3f} "
               f"-> {last['itm']:.3f} (chance ln 2 = 0.693)")
