"""`madcache demo run`: the whole pipeline on the demo world (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("run")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="Folder for every stage's output (reused on rerun).")
@click.option("--size", type=click.Choice(["small", "default"]), default="default",
              show_default=True, help="Demo world size (small: a quick smoke run).")
@click.option("--seed", type=int, default=0, show_default=True, help="World and teacher seed.")
@click.option("--teacher-steps", type=click.IntRange(min=1), default=None,
              help="Demo teacher pretraining steps (default: the teacher's own default).")
@click.option("--student-steps", type=click.IntRange(min=1), default=None,
              help="Demo student pretraining steps (default: the student's own default).")
@click.option("--regime", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The regime check's spec (default: madcache/demo/regime.toml).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Training runs at once.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of the demo pipeline (madcache/demo/demo.toml) (e.g. seeds=[0,1]).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_run(out: Path, size: str, seed: int, teacher_steps: int | None,
             student_steps: int | None, regime: Path | None, jobs: int,
             overrides: tuple[str, ...], quiet: bool) -> None:
    """World -> teacher -> student -> caches -> regions -> regime check (it picks the shot
    size) -> sweep (baseline/MD/MAD x seeds, standard + SM, zero-shot) -> report. Rerunning
    reuses everything already done."""
    from madcache.demo.run import DemoConfig, run_demo

    values = dict(out=out, size=size, seed=seed, teacher_steps=teacher_steps,
                  student_steps=student_steps, jobs=jobs, overrides=overrides,
                  progress=not quiet)
    if regime is not None:
        values["regime"] = regime
    config = DemoConfig.from_dict(values)
    result = run_demo(config,
                      log=lambda line: click.echo(line, err=True))
    paths = result["paths"]
    click.echo("")
    click.echo(result["report"]["markdown"])
    click.echo(f"stage times (s): {result['timings']}")
    click.echo(f"report: {paths.report / 'report.md'}  (CSV: report.csv, runs.csv; plots: "
               f"{', '.join(p.name for p in result['report']['files'] if p.suffix == '.png')})")
