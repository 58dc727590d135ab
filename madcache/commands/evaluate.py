"""`madcache eval`: score a trained run on a split (optionally shortcut-mitigated), or the
teacher alone from its cache (`--zero-shot`)."""

from __future__ import annotations

import json

import click

from madcache.core.errors import ConfigError


@click.command("eval")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A run directory written by `madcache train`.")
@click.option("--split", default="val", show_default=True)
@click.option("--sm", is_flag=True, help="Evaluate the shortcut-mitigated split (VCR).")
@click.option("--root", help="Dataset root, if it moved since training.")
@click.option("--regions", help="Region store of the split (default: the run's).")
@click.option("--zero-shot", "zero_shot", is_flag=True, help="Teacher-only accuracy from a cache.")
@click.option("--cache", help="The cache to score with --zero-shot.")
def eval_command(run_dir: str | None, split: str, sm: bool, root: str | None,
                 regions: str | None, zero_shot: bool, cache: str | None) -> None:
    """Evaluate a run (metrics into its metrics.json) or a teacher zero-shot."""
    if zero_shot:
        if cache is None:
            raise ConfigError("--zero-shot needs --cache PATH")
        from madcache.evaluation.zeroshot import run_zero_shot

        click.echo(json.dumps(run_zero_shot(cache), indent=2, default=str))
        return
    if run_dir is None:
        raise ConfigError("give --run runs/NAME (or --zero-shot --cache PATH)")
    from madcache.evaluation.evaluate import evaluate_run

    result = evaluate_run(run_dir, split=split, sm=sm, root=root, regions=regions)
    key = f"{split}_sm" if sm else split
    click.echo(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
