"""`resolve_device`: auto is the GPU where there is one (cuda:LOCAL_RANK under torchrun), else
the CPU; explicit values win; a device the machine lacks is one line naming the option."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from madcache.core.device import device_kind, resolve_device
from madcache.core.errors import ConfigError


def test_auto_follows_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto", env={}) == "cuda"
    assert resolve_device("auto", env={"WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == "cuda:3"
    assert resolve_device("cpu", env={"WORLD_SIZE": "4"}) == "cpu"  # explicit wins
    assert resolve_device("CUDA:2") == "cuda:2"
    with pytest.raises(ConfigError, match=r"--device cuda:9: .* 4 visible CUDA device"):
        resolve_device("cuda:9")


@pytest.mark.parametrize(
    "value,message",
    [
        ("tpu", r"--device: unknown device 'tpu'; use auto .* cpu, cuda or cuda:N"),
        ("cpu:1", r"names a CPU index"),
    ],
)
def test_unknown_devices_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(value)


def test_cuda_on_a_machine_without_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError,
        match=r"--device cuda:99: this machine has no CUDA device.*"
        r"use --device auto or cpu",
    ):
        resolve_device("cuda:99")
    assert device_kind("cuda:3") == "cuda" and device_kind(None) == "cpu"


@pytest.mark.parametrize("command", ["train", "extract"])
def test_cli_refuses_a_missing_device_in_one_line(tmp_path, monkeypatch, command):
    """`madcache train|extract --device cuda:99` on a CPU box: exit 2, one line, no
    traceback."""
    from madcache.cli import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "data").mkdir()
    args = {
        "train": [
            "train",
            "--dataset",
            "vcr",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cuda:99",
        ],
        "extract": [
            "extract",
            "--dataset",
            "vcr",
            "--root",
            str(tmp_path / "data"),
            "--split",
            "train",
            "--teacher",
            "madcache-demo",
            "--device",
            "cuda:99",
            "--out",
            str(tmp_path / "cache"),
        ],
    }[command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "--device cuda:99: this machine has no CUDA device" in result.output
    assert "Traceback" not in result.output


def test_resume_across_device_kinds_is_refused_unless_allowed(tmp_path):
    from madcache.train.rundir import CONFIG, INPUTS, check_resume

    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"device": "cuda", "lr": 1.0}))
    (run / INPUTS).write_text(json.dumps({"cache_fingerprint": "a", "device": "cuda:0"}))
    check_resume(
        run, {"device": "cuda:1", "lr": 1.0}, {"cache_fingerprint": "a", "device": "cuda:1"}
    )
    with pytest.raises(
        ConfigError,
        match=r"^--resume: the run trained on cuda:0 and would "
        r"continue on cpu; .*--device cuda .*"
        r"--allow-device-change",
    ):
        check_resume(run, {"device": "cpu", "lr": 1.0}, {"cache_fingerprint": "a", "device": "cpu"})
    check_resume(
        run,
        {"device": "cpu", "lr": 1.0, "allow_device_change": True},
        {"cache_fingerprint": "a", "device": "cpu"},
    )
    # a run recorded before inputs.json held the device: its config.json's device counts
    (run / INPUTS).write_text(json.dumps({"cache_fingerprint": "a"}))
    (run / CONFIG).write_text(json.dumps({"device": "cpu", "lr": 1.0}))
    check_resume(run, {"device": "cpu", "lr": 1.0}, {"cache_fingerprint": "a", "device": "cpu"})
