"""`madcache demo student`: VL-pretrain the demo student on the demo world's captions. Flags:
`DemoStudentConfig`'s fields and `--progress`."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.core.progress import ProgressSetting
from madcache.demo.student import DemoStudentConfig


@click.command("student")
@config_options(DemoStudentConfig, required=True)
@config_options(ProgressSetting)
def demo_student(progress: bool | None, **flags: Any) -> None:
    """MLM + image-text matching on the captions (no task labels); a finished student in OUT
    is kept as is, and refused if it was pretrained with other settings. Every demo method
    starts from it."""
    from madcache.core.io import check_output_location
    from madcache.demo.student import pretrain_demo_student

    config = build_config(DemoStudentConfig, flags)
    check_output_location(config.out, roots=[config.data])
    summary = pretrain_demo_student(
        config, progress=progress is not False, log=lambda line: click.echo(line, err=True)
    )
    first, last = summary["curve"][0], summary["curve"][-1]
    click.echo(f"demo student: {config.out} ({summary['steps']} steps, {summary['seconds']} s)")
    click.echo(
        f"held-out MLM {first['mlm']:.3f} -> {last['mlm']:.3f}, ITM {first['itm']:.3f} "
        f"-> {last['itm']:.3f} (chance ln 2 = 0.693)"
    )
