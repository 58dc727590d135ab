"""`TrainConfig`: values type- and range-checked with the key named (TOML, flags), and the
`madcache train` flags generated from its fields."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Literal

import pytest
from click.testing import CliRunner

from madcache.cli import cli
from madcache.core.config import setting
from madcache.core.errors import ConfigError, ConfigValueError
from madcache.train import loop as loop_mod
from madcache.train.config import TrainConfig

REQUIRED = {"dataset": "vcr", "root": "r", "out": "o"}


def run_cli(monkeypatch, args):
    seen = {}

    def fake(config):
        seen["config"] = config
        return {"history": [], "eval": {}}

    monkeypatch.setattr(loop_mod, "run_training", fake)
    return CliRunner().invoke(cli, ["train", *args]), seen.get("config")


@pytest.mark.parametrize(
    "line, message",
    [
        ('lr = "fast"', "train.lr: expected a number, got 'fast'"),
        ('resume = "no"', "train.resume: expected true or false, got 'no'"),
        ('epochs = "3"', "train.epochs: expected an integer, got '3'"),
        ("epochs = 0", "train.epochs: must be >= 1, got 0"),
        ("max_steps = -5", "train.max_steps: must be >= 1, got -5"),
        ("lr = -1e-4", r"train.lr: must be > 0, got -0.0001"),
        ("lr = inf", "train.lr: expected a finite number, got inf"),
        ("batch_size = 0", "train.batch_size: must be >= 1, got 0"),
        ("warmup = 1.5", "train.warmup: must be < 1, got 1.5"),
        ('student_options = "tiny"', "train.student_options: expected a table, got 'tiny'"),
    ],
)
def test_a_bad_toml_value_is_named_with_file_and_key(tmp_path, line, message):
    path = tmp_path / "run.toml"
    path.write_text('[train]\ndataset = "vcr"\nroot = "r"\nout = "o"\n' + line + "\n")
    with pytest.raises(ConfigValueError) as error:
        TrainConfig.from_toml(path)
    assert str(error.value) == f"{path}: {message}".replace("\\", "")


def test_a_top_level_toml_names_the_bare_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "vcr"\nroot = "r"\nout = "o"\nresume = "no"\n')
    with pytest.raises(ConfigValueError, match=r"run.toml: resume: expected true or false"):
        TrainConfig.from_toml(path)


def test_ints_are_numbers_and_m_must_select_a_word():
    assert TrainConfig.from_dict({**REQUIRED, "lr": 1}).lr == 1.0
    with pytest.raises(
        ConfigError, match="m: method 'mad' selects m words per text; m must be >= 1, got 0"
    ):
        TrainConfig.from_dict({**REQUIRED, "method": "mad", "m": 0})
    assert TrainConfig.from_dict({**REQUIRED, "method": "md", "m": 0}).m == 0


def test_the_command_names_a_bad_value_in_one_line(monkeypatch, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\ndataset = "vcr"\nroot = "r"\nout = "o"\nlr = "fast"\n')
    result, config = run_cli(monkeypatch, ["--config", str(path)])
    assert result.exit_code == 2 and config is None
    assert result.output.strip() == f"Error: {path}: train.lr: expected a number, got 'fast'"
    for flags, message in (
        (["--lr", "fast"], "Invalid value for '--lr': 'fast' is not a valid float"),
        (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1"),
        (["--student-option", "layers"], "--student-option: expected KEY=VALUE, got 'layers'"),
    ):
        result, config = run_cli(
            monkeypatch, ["--dataset", "vcr", "--root", "r", "--out", "o", *flags]
        )
        assert result.exit_code == 2 and message in result.output and config is None


def test_every_field_is_a_flag_with_its_help(monkeypatch):
    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
        assert flag in help_text, flag
        assert " ".join(f.metadata["help"].split()) in help_text, f.name
    result, config = run_cli(
        monkeypatch,
        [
            "--dataset",
            "vcr",
            "--root",
            "r",
            "--out",
            "o",
            "--warmup",
            "0.2",
            "--chunk-size",
            "64",
            "--weight-decay",
            "0",
            "--read-option",
            "check_files=true",
            "--no-resume",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        config.warmup,
        config.chunk_size,
        config.weight_decay,
        config.read_options,
        config.resume,
    ) == (0.2, 64, 0.0, {"check_files": True}, False)


@pytest.fixture
def train_config_with_a_new_field(monkeypatch):
    """`TrainConfig` with one more field, and `madcache train` rebuilt from it."""
    import madcache.commands.train as command
    import madcache.train.config as config_module

    grown = dataclasses.make_dataclass(
        "TrainConfig",
        [("grad_accum", int, setting(1, minimum=1, help="Micro-batches per optimizer step."))],
        bases=(TrainConfig,),
    )
    monkeypatch.setattr(config_module, "TrainConfig", grown)
    importlib.reload(command)
    yield
    monkeypatch.undo()
    importlib.reload(command)


def test_a_new_field_shows_up_as_a_typed_flag(monkeypatch, train_config_with_a_new_field):
    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    assert (
        "--grad-accum INTEGER RANGE Micro-batches per optimizer step. [default: 1] [x>=1]"
        in help_text
    )
    result, config = run_cli(
        monkeypatch, ["--dataset", "vcr", "--root", "r", "--out", "o", "--grad-accum", "4"]
    )
    assert result.exit_code == 0, result.output
    assert config.grad_accum == 4
    result, _ = run_cli(
        monkeypatch, ["--dataset", "vcr", "--root", "r", "--out", "o", "--grad-accum", "x"]
    )
    assert result.exit_code == 2 and "'--grad-accum': 'x' is not a valid integer" in result.output


def test_flags_for_every_kind_of_setting():
    """Literal -> a choice, list -> a repeatable flag, any other type -> JSON checked on load."""
    import click

    from madcache.commands.options import config_options
    from madcache.core.config import config_from_dict

    @dataclasses.dataclass
    class Settings:
        precision: Literal["fp32", "bf16"] = setting("fp32", help="Compute precision.")
        evals: list[str] = setting(factory=list, help="An evaluated split (repeatable).")
        window: tuple[int, int] = setting((0, 1), help="A step window.")

    seen = {}

    @click.command()
    @config_options(Settings)
    def command(**flags):
        seen["config"] = config_from_dict(
            Settings, {k: v for k, v in flags.items() if v is not None}, noun="key"
        )

    result = CliRunner().invoke(
        command,
        ["--precision", "bf16", "--evals", "val", "--evals", "val_sm", "--window", "[2, 5]"],
    )
    assert result.exit_code == 0, result.output
    assert seen["config"] == Settings("bf16", ["val", "val_sm"], (2, 5))
    assert (
        "'fp16' is not one of 'fp32', 'bf16'"
        in CliRunner().invoke(command, ["--precision", "fp16"]).output
    )
    result = CliRunner().invoke(command, ["--window", "[2, 2.5]"])
    assert isinstance(result.exception, ConfigValueError)
    assert str(result.exception) == "window[1]: expected an integer, got 2.5"
