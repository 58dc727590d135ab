"""A student that does not implement the whole `Student` protocol is refused when it is built,
before step 1 (not when `save_student` needs `export_options` after training)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from madcache.core.errors import ConfigError
from madcache.students import STUDENTS, build_student
from madcache.students.base import StudentOutput, missing_members
from madcache.train import loop as loop_mod
from madcache.train.config import TrainConfig


class NoExport(nn.Module):
    """Everything a training step uses, but no `export_options` (so it could not be saved)."""

    name = "no-export"
    task = "multiple_choice"

    def __init__(self, region_dim: int = 4, **options) -> None:
        super().__init__()
        self.hidden_size = 8
        self.region = nn.Linear(region_dim, 8)
        self.head = nn.Linear(8, 1)

    def prepare(self, examples, regions):
        return {"regions": regions, "choices": examples[0].num_choices}

    def forward(self, inputs):
        img = self.region(inputs["regions"].feat).mean(1)  # [B, H]
        per_choice = img[:, None, :].expand(-1, inputs["choices"], -1)  # [B, C, H]
        tokens = per_choice[:, :, None, :]
        return StudentOutput(
            self.head(per_choice).squeeze(-1),
            per_choice,
            per_choice,
            tokens,
            torch.full((*tokens.shape[:3], 2), -1, dtype=torch.long),
        )

    def pretrain_losses(self, inputs, generator):
        return {}


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setitem(STUDENTS._entries, "no-export", NoExport)


@pytest.fixture(scope="module")
def regions(tmp_path_factory, demo_root):
    """A region store of the small demo world's VCR train split."""
    from madcache.students.regions import build_region_store

    out = tmp_path_factory.mktemp("regions") / "store"
    build_region_store(
        dataset="vcr",
        root=demo_root / "vcr",
        split="train",
        extractor="boxcrop",
        out=out,
        max_regions=4,
        progress=False,
    )
    return out


def test_missing_members_are_listed():
    assert missing_members(NoExport()) == ["export_options"]
    assert missing_members(object()) == [
        "__call__",
        "export_options",
        "hidden_size",
        "name",
        "prepare",
        "pretrain_losses",
        "task",
    ]


def test_build_student_refuses_an_incomplete_student(stand_in):
    with pytest.raises(
        ConfigError,
        match=r"^student 'no-export' \(NoExport\) does not implement "
        r"the Student protocol: missing export_options ",
    ):
        build_student("no-export")


def test_training_fails_before_step_1(demo_root, regions, stand_in, monkeypatch, tmp_path):
    steps = []
    monkeypatch.setattr(loop_mod.StageLoss, "forward", lambda *a, **k: steps.append(1))
    config = TrainConfig(
        dataset="vcr",
        root=str(demo_root / "vcr"),
        out=str(tmp_path / "run"),
        regions=str(regions),
        student="no-export",
        eval_split=None,
        max_steps=2,
        batch_size=4,
    )
    with pytest.raises(ConfigError, match="student 'no-export'.*missing export_options"):
        loop_mod.run_training(config)
    assert steps == [] and not (tmp_path / "run" / "config.json").exists()

    from madcache.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dataset",
            "vcr",
            "--root",
            config.root,
            "--regions",
            config.regions,
            "--student",
            "no-export",
            "--max-steps",
            "2",
            "--out",
            config.out,
        ],
    )
    assert result.exit_code == 2 and steps == []
    assert result.output.count("\n") == 1 and "missing export_options" in result.output
