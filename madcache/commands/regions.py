"""`madcache regions`: extract region features of a dataset split into a region store.

The flags are generated from `RegionsConfig`'s fields (madcache/commands/options.py)."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import config_options
from madcache.students.regions import RegionsConfig


@click.command("regions")
@config_options(RegionsConfig, required=True)
def regions(**flags: Any) -> None:
    """Extract region features (one entry per image) for the student; resumable."""
    from madcache.students.regions import build_region_store

    summary = build_region_store(**{k: v for k, v in flags.items() if v is not None})
    click.echo(
        f"region store {summary['path']}: {summary['images']} images, "
        f"{summary['regions']} regions ({summary['shards_written']} shards written, "
        f"{summary['shards_reused']} reused)"
    )
