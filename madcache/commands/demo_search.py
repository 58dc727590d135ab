"""`madcache demo search`: choose the demo's training settings on the baseline alone. Flags:
`SearchConfig`'s fields."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.demo.config import SearchConfig


@click.command("search")
@config_options(SearchConfig)
def demo_search(**flags: Any) -> None:
    """Baseline-only search of the demo's training settings on a dev split held out of the
    demo's train data (never val, never MD/MAD). Prints the table; writes search.json,
    search.md and curves.png under OUT/search."""
    from madcache.demo.run import PIPELINE
    from madcache.demo.search import SEARCH_FILE, load_search, run_search, search_markdown

    config = build_config(SearchConfig, flags)
    summary = run_search(
        config.out,
        pipeline=PIPELINE,
        spec=load_search(config.spec or SEARCH_FILE),
        jobs=config.jobs,
        progress=config.progress,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(search_markdown(summary))
    click.echo(f"curves: {config.out / 'search' / 'curves.png'}")
