"""`init_from`: a single-stream student that starts from a saved (pretrained) one, with a new
task head; what it refuses."""

from __future__ import annotations

import pytest
import torch

from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.students import build_student, load_student, save_student

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, region_dim=24)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("pretrained")
    save_student(build_student("single-stream", **SMALL), directory)
    return directory


def test_the_body_is_the_saved_one_and_the_task_head_is_new(pretrained):
    saved = load_student(pretrained).state_dict()
    torch.manual_seed(1)
    student = build_student(
        "single-stream",
        task="classification",
        num_classes=3,
        region_dim=24,
        init_from=str(pretrained),
    )
    state = student.state_dict()
    body = [k for k in saved if not k.startswith("head.")]
    assert body and all(torch.equal(state[k], saved[k]) for k in body)
    assert state["head.3.weight"].shape == (3, 32)  # the new task's head, its own init
    assert student.bert.config.hidden_size == 32 and student.config.init_from is None


def test_a_run_saved_from_it_reloads_without_the_source(pretrained, tmp_path, make):
    student = build_student("single-stream", region_dim=24, init_from=str(pretrained)).eval()
    save_student(student, tmp_path / "run")
    again = load_student(tmp_path / "run").eval()
    examples, regions = [make.vcr(0)], make.regions((3,), dim=24)
    torch.testing.assert_close(
        again(again.prepare(examples, regions)).logits,
        student(student.prepare(examples, regions)).logits,
    )


def test_what_init_from_refuses(pretrained, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="holds no saved student"):
        build_student("single-stream", init_from=str(tmp_path))
    with pytest.raises(ConfigError, match="reads 24-dim region features, these regions have 7"):
        build_student("single-stream", region_dim=7, init_from=str(pretrained))
