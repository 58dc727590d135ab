"""`madcache train`: build a `TrainConfig` from a TOML file and flags, call `run_training`.

Imports no teacher module and not open_clip (tests/test_train.py makes those imports fail).
"""

from __future__ import annotations

import os
from typing import Any

import click

from madcache.evaluation.adapters import ADAPTERS
from madcache.commands.options import parse_key_values
from madcache.core.errors import ConfigError
from madcache.method.methods import METHODS
from madcache.train.precision import PRECISIONS
from madcache.train.tracking import TRACKERS

# The paper's adapter baselines train on frozen cached teacher features, not a student
# (madcache/evaluation/adapters.py); `madcache train --method adapter-*` runs them with these flags.
ADAPTER_FLAGS = {"dataset", "cache", "out", "method", "root", "split_file", "per_category", "seed",
                 "epochs", "batch_size", "lr", "device"}


@click.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file with training settings (a [train] table); flags override it.")
@click.option("--method", type=click.Choice([*METHODS.names(), *ADAPTERS]),
              help="Default: baseline. adapter-* train a head on frozen cached teacher features.")
@click.option("--eval-cache", "eval_cache", multiple=True, metavar="SPLIT=PATH",
              help="adapter-* only: the cache of an evaluated split (e.g. val=cache/vcr/val).")
@click.option("--cache", help="Teacher-target cache (not needed for baseline).")
@click.option("--dataset", help="vcr, snli-ve, vqa or demo.")
@click.option("--root", help="Dataset root (its original files).")
@click.option("--regions", help="Region feature store of the training split.")
@click.option("--eval-regions", help="Region feature store of the eval split (default --regions).")
@click.option("--split", help="Training split (default train).")
@click.option("--eval-split", help="Validation split (default val).")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False),
              help="A saved low-shot split.")
@click.option("--per-category", type=int, help="Low-shot: K examples per category.")
@click.option("--seed", type=int)
@click.option("--af-epochs", type=int, help="Adaptive finetuning epochs before the task stage.")
@click.option("--epochs", type=int)
@click.option("--max-steps", type=int, help="Task-stage steps (overrides --epochs).")
@click.option("--batch-size", type=int, help="Examples per optimizer step, over all processes.")
@click.option("--lr", type=float)
@click.option("--w", type=float, help="MD weight w (default 0.05).")
@click.option("--m", type=int, help="Words selected per text (default 2).")
@click.option("--w-prime", type=float, help="MAD weight w' (default w (2 + m) / 2).")
@click.option("--teacher-logits", help="Cached logits used for CW (default: the cache's).")
@click.option("--eval-every", type=int)
@click.option("--checkpoint-every", type=int)
@click.option("--student", help="Registered student (default single-stream).")
@click.option("--student-option", "student_option", multiple=True, metavar="K=V")
@click.option("--device", help="cpu or cuda (under torchrun: each process takes the GPU of its "
              "LOCAL_RANK).")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Default bf16 autocast on CUDA, fp32 on the CPU.")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step on each process "
              "(same global --batch-size, less memory).")
@click.option("--grad-clip", type=float, help="Clip the global gradient norm (default off).")
@click.option("--prefetch", type=int, help="Batches prepared ahead of the step (default 4).")
@click.option("--report-to", type=click.Choice(TRACKERS.names()),
              help="Also log scalars, e.g. to TensorBoard (<run>/tensorboard/).")
@click.option("--out", help="Run directory, e.g. runs/NAME.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint.")
def train(config_file: str | None, student_option: tuple[str, ...], eval_cache: tuple[str, ...],
          **flags: Any) -> None:
    """Train a student on cached teacher targets (baseline, md, mad and ablations), or an
    adapter head on the frozen cached features (adapter-*)."""
    values = {k: v for k, v in flags.items() if v is not None}
    if str(values.get("method", "")).startswith("adapter-"):
        train_adapter(values, parse_key_values(eval_cache, flag="--eval-cache"), config_file)
        return
    from madcache.train.config import TrainConfig
    from madcache.train.loop import run_training

    if student_option:
        values["student_options"] = parse_key_values(student_option, flag="--student-option")
    config = (TrainConfig.from_toml(config_file, **values) if config_file
              else TrainConfig.from_dict(values))
    metrics = run_training(config)
    if int(os.environ.get("RANK", "0")) != 0:      # under torchrun, rank 0 reports
        return
    steps = metrics["history"][-1]["global_step"] if metrics["history"] else 0
    click.echo(f"run {config.out}: method {config.method}, {steps} steps")
    for split, result in metrics["eval"].items():
        click.echo(f"  {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))


def train_adapter(values: dict[str, Any], eval_caches: dict[str, Any],
                  config_file: str | None) -> None:
    from madcache.evaluation.adapters import AdapterConfig, run_adapter

    unsupported = sorted(set(values) - ADAPTER_FLAGS) + (["--config"] if config_file else [])
    if unsupported:
        raise ConfigError(f"{values['method']} trains on cached features only; it does not take "
                          f"{', '.join(unsupported)}")
    metrics = run_adapter(AdapterConfig.from_dict({**values, "eval_caches": eval_caches}))
    click.echo(f"run {values.get('out')}: method {values['method']}")
    for split, result in metrics["eval"].items():
        click.echo(f"  {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
