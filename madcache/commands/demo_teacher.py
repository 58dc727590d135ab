"""`madcache demo teacher`: pretrain the tiny CLIP-style demo teacher on the demo world."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("teacher")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Demo world root (holds captions/captions.jsonl and images/).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.safetensors); a PATH.json sidecar goes beside it.")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo_teacher(data: Path, out: Path, steps: int, batch_size: int, seed: int,
                 quiet: bool) -> None:
    """Pretrain `madcache-demo` (CLIP loss, CPU-sized); a complete checkpoint with the same
    settings is kept as is. Load it with `--teacher madcache-demo --checkpoint OUT`."""
    from madcache.core.io import check_output_location, refuse_foreign_file
    from madcache.demo.teacher import DemoTeacherConfig, is_demo_teacher, pretrain_demo_teacher

    check_output_location(out, roots=[data])
    refuse_foreign_file(out, ours=is_demo_teacher, what="demo teacher checkpoint")

    cfg = DemoTeacherConfig(data=data, out=out, steps=steps, batch_size=batch_size, seed=seed)
    summary = pretrain_demo_teacher(cfg, progress=not quiet)
    click.echo(f"demo teacher: {out} ({summary['steps']} steps, final loss "
               f"{summary['final_loss']}, {summary['steps_per_s']} steps/s)")
    click.echo(f"held-out image->caption top-1: {summary['retrieval_top1_before']:.1f}% before, "
               f"{summary['retrieval_top1_after']:.1f}% after")
