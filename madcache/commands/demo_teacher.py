"""`madcache demo teacher`: pretrain the tiny CLIP-style demo teacher on the demo world. Flags:
`DemoTeacherConfig`'s fields and `--progress`."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.core.progress import ProgressSetting
from madcache.demo.teacher import DemoTeacherConfig


@click.command("teacher")
@config_options(DemoTeacherConfig, required=True)
@config_options(ProgressSetting)
def demo_teacher(progress: bool | None, **flags: Any) -> None:
    """Pretrain `madcache-demo` (CLIP loss, CPU-sized); a complete checkpoint with the same
    settings is kept as is. Load it with `--teacher madcache-demo --checkpoint OUT`."""
    from madcache.core.io import check_output_location, refuse_foreign_file
    from madcache.demo.teacher import is_demo_teacher, pretrain_demo_teacher

    cfg = build_config(DemoTeacherConfig, flags)
    check_output_location(cfg.out, roots=[cfg.data])
    refuse_foreign_file(cfg.out, ours=is_demo_teacher, what="demo teacher checkpoint")
    summary = pretrain_demo_teacher(cfg, progress=progress is not False)
    click.echo(
        f"demo teacher: {cfg.out} ({summary['steps']} steps, final loss "
        f"{summary['final_loss']}, {summary['steps_per_s']} steps/s)"
    )
    click.echo(
        f"held-out image->caption top-1: {summary['retrieval_top1_before']:.1f}% before, "
        f"{summary['retrieval_top1_after']:.1f}% after"
    )
