"""`madcache predict`: a trained run's predictions on a split, in the dataset's official
submission format (VCR leaderboard CSV, VQA v2 results JSON, SNLI-VE JSONL). Flags:
`PredictConfig`'s fields."""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.evaluation.config import PredictConfig


@click.command()
@config_options(PredictConfig, required=True)
def predict(**flags: Any) -> None:
    """Write a run's predictions on SPLIT as a submission file (docs/evaluation.md)."""
    from madcache.evaluation.predict import write_predictions

    config = build_config(PredictConfig, flags)
    summary = write_predictions(
        config.run,
        split=config.split,
        out=config.out,
        root=config.root,
        regions=config.regions,
        force=config.force,
    )
    click.echo(
        f"{summary['dataset']} {summary['split']}: {summary['rows']} rows -> {summary['out']}"
    )
