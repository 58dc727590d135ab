"""`madcache extract`: run the teachers once over a dataset split into a resumable cache.

The flags are generated from `ExtractConfig`'s fields (madcache/commands/options.py)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click

from madcache.cli import UserError
from madcache.commands.options import build_config, config_options
from madcache.core.errors import FingerprintMismatchError
from madcache.core.io import human_bytes
from madcache.extraction.config import ExtractConfig


@click.command("extract")
@config_options(ExtractConfig, required=True)
def extract(**flags: Any) -> None:
    """Run the teachers once over a split and write every MAD target into a sharded cache.

    A killed run resumes at the first incomplete shard when run again with the same options.
    Many processes may extract into one cache (torchrun, --rank/--world-size, a Slurm array);
    the cache is complete once `madcache cache finish` ran (automatic in most cases).
    """
    from madcache.extraction import extract as run_extraction

    config = build_config(ExtractConfig, flags, noun="extract option")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        try:
            summary = run_extraction(config)
        except FingerprintMismatchError as exc:
            raise UserError(_mismatch_message(exc, config.output_path())) from None
    click.echo(format_summary(summary))
    if not summary.get("finished"):
        click.echo(
            f"rank {summary['rank']} of {summary['world_size']} done; the cache is "
            "complete once every rank is: then run `madcache cache finish "
            f"{summary['out']}` (rank 0 does it itself under torchrun)"
        )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.secho(f"warning: {message}", fg="yellow", err=True)


def _mismatch_message(exc: FingerprintMismatchError, out: Path | str) -> str:
    differs = "\n".join(f"  - {d}" for d in exc.differences) or f"  {exc}"
    return (
        f"the cache at {out} was built with a different fingerprint; what differs:\n"
        f"{differs}\nuse --force to overwrite it, or --out for a new cache"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """The final summary as a two-column table."""
    rows = [
        ("cache", summary["out"]),
        ("format", summary["format"]),
        ("examples", summary["examples"]),
        ("images", summary["images"]),
        ("texts", summary["texts"]),
        (
            "shards",
            f"{summary['shards']} ({summary['shards_written']} written, "
            f"{summary['shards_resumed']} resumed"
            + (
                f" by rank {summary['rank']} of {summary['world_size']}"
                if summary.get("world_size", 1) > 1
                else ""
            )
            + ")",
        ),
        ("bytes", human_bytes(summary["bytes"])),
        ("seconds", f"{summary['seconds']:.1f}"),
        ("samples/s", summary["samples_per_s"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
