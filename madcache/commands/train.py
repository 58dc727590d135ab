"""`madcache train`: build a `TrainConfig` from a TOML file and flags, call `run_training`.

Imports no teacher module and not open_clip (tests/test_train.py makes those imports fail).
"""

from __future__ import annotations

from typing import Any

import click

from madcache.commands.options import parse_key_values
from madcache.methods import METHODS


@click.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file with training settings (a [train] table); flags override it.")
@click.option("--method", type=click.Choice(METHODS.names()), help="Default: baseline.")
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
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--w", type=float, help="MD weight w (default 0.05).")
@click.option("--m", type=int, help="Words selected per text (default 2).")
@click.option("--w-prime", type=float, help="MAD weight w' (default w (2 + m) / 2).")
@click.option("--teacher-logits", help="Cached logits used for CW (default: the cache's).")
@click.option("--eval-every", type=int)
@click.option("--checkpoint-every", type=int)
@click.option("--student", help="Registered student (default single-stream).")
@click.option("--student-option", "student_option", multiple=True, metavar="K=V")
@click.option("--device")
@click.option("--out", help="Run directory, e.g. runs/NAME.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint.")
def train(config_file: str | None, student_option: tuple[str, ...], **flags: Any) -> None:
    """Train a student on cached teacher targets (baseline, md, mad and ablations)."""
    from madcache.train import TrainConfig, run_training

    values = {k: v for k, v in flags.items() if v is not None}
    if student_option:
        values["student_options"] = parse_key_values(student_option, flag="--student-option")
    config = (TrainConfig.from_toml(config_file, **values) if config_file
              else TrainConfig.from_dict(values))
    metrics = run_training(config)
    steps = metrics["history"][-1]["global_step"] if metrics["history"] else 0
    click.echo(f"run {config.out}: method {config.method}, {steps} steps")
    for split, result in metrics["eval"].items():
        click.echo(f"  {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
