"""`madcache demo data`: generate the synthetic demo world (no download). Flags: `WorldConfig`'s
fields."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.demo.config import WorldConfig


@click.command("data")
@config_options(WorldConfig, required=True)
def demo_data(**flags: Any) -> None:
    """Generate the demo world in the original VCR / SNLI-VE / VQA v2 formats plus a caption
    corpus. Same seed, same bytes; a complete folder is left as it is."""
    from madcache.demo.world import generate_demo_world

    config = build_config(WorldConfig, flags)
    out, size, seed = config.out, config.size, config.seed
    summary = generate_demo_world(out, size=size, seed=seed, progress=config.progress)
    counts = summary["counts"]
    if summary["skipped"]:
        click.echo(
            f"demo world already complete in {out} (size {size}, seed {seed}); nothing to do"
        )
        return
    click.echo(f"demo world ({size}, seed {seed}) written to {out} in {summary['seconds']} s")
    click.echo("  vcr:      " + _split_counts(counts["vcr"], "questions"))
    click.echo("  snli-ve:  " + _split_counts(counts["snli-ve"], "pairs"))
    click.echo(
        "  vqa:      "
        + _split_counts(counts["vqa"], "questions")
        + f"; {counts['vqa']['answer_vocabulary']} answers in vqa/answers.txt"
    )
    click.echo(
        f"  captions: {counts['captions']['captions']} captions of "
        f"{counts['captions']['images']} images"
    )


def _split_counts(by_split: dict, unit: str) -> str:
    return ", ".join(
        f"{split} {c[unit]} {unit} / {c['images']} images"
        for split, c in by_split.items()
        if isinstance(c, dict)
    )
