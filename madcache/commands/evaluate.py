"""`madcache eval`: score a trained run on a split (optionally shortcut-mitigated), or the
teacher alone from its cache (`--zero-shot`). Flags: `EvalConfig`'s fields."""

from __future__ import annotations

import json
from typing import Any

import click

from madcache.commands.options import build_config, config_options
from madcache.evaluation.config import EvalConfig


@click.command("eval")
@config_options(EvalConfig)
def eval_command(**flags: Any) -> None:
    """Evaluate a run (metrics into its metrics.json) or a teacher zero-shot."""
    config = build_config(EvalConfig, flags)
    if config.zero_shot:
        from madcache.evaluation.zeroshot import run_zero_shot

        click.echo(json.dumps(run_zero_shot(config.cache), indent=2, default=str))
        return
    from madcache.evaluation.evaluate import evaluate_run

    result = evaluate_run(
        config.run, split=config.split, sm=config.sm, root=config.root, regions=config.regions
    )
    key = f"{config.split}_sm" if config.sm else config.split
    click.echo(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
