"""`madcache train`: build a `TrainConfig` from a TOML file and flags, call `run_training`.

The flags are generated from `TrainConfig`'s fields (madcache/commands/options.py): a new field
is a new typed flag with its help; `--progress` is `ProgressSetting`'s (a display setting, not
recorded with the run). Imports no teacher module and not open_clip (tests/train/test_train.py
makes those imports fail).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import click

from madcache.commands.options import config_options
from madcache.core.errors import ConfigError
from madcache.core.progress import ProgressSetting, shown
from madcache.evaluation.adapters import ADAPTERS, AdapterConfig
from madcache.train.config import TrainConfig

# The paper's adapter baselines train on frozen cached teacher features, not a student
# (madcache/evaluation/adapters.py); `madcache train --method adapter-*` runs them with the
# flags of the settings the two configs share.
ADAPTER_FLAGS = {f.name for f in dataclasses.fields(TrainConfig)} & {
    f.name for f in dataclasses.fields(AdapterConfig)
}


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file with training settings (a [train] table); flags override it.",
)
@config_options(
    TrainConfig,
    replace={
        "method": {"extra_help": " adapter-* train a head on frozen cached teacher features."}
    },
)
@config_options(ProgressSetting)
def train(config_file: str | None, progress: bool | None, **flags: Any) -> None:
    """Train a student on cached teacher targets (baseline, md, mad and ablations), or an
    adapter head on the frozen cached features (adapter-*)."""
    values = {k: v for k, v in flags.items() if v is not None}
    if values.get("method") in ADAPTERS:
        train_adapter(values, config_file)
        return
    from madcache.train.loop import run_training

    config = (
        TrainConfig.from_toml(config_file, **values)
        if config_file
        else TrainConfig.from_dict(values)
    )
    with shown(progress is not False):
        metrics = run_training(config)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    steps = metrics["history"][-1]["global_step"] if metrics["history"] else 0
    click.echo(f"run {config.out}: method {config.method}, {steps} steps")
    for split, result in metrics["eval"].items():
        click.echo(f"  {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))


def train_adapter(values: dict[str, Any], config_file: str | None) -> None:
    from madcache.evaluation.adapters import run_adapter

    unsupported = sorted(set(values) - ADAPTER_FLAGS) + (["--config"] if config_file else [])
    if unsupported:
        raise ConfigError(
            f"{values['method']} trains on cached features only; it does not take "
            f"{', '.join(unsupported)}"
        )
    metrics = run_adapter(AdapterConfig.from_dict(values))
    click.echo(f"run {values.get('out')}: method {values['method']}")
    for split, result in metrics["eval"].items():
        click.echo(f"  {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
