"""The zero-shot protocol itself, on the default demo world: a teacher pretrained on the demo
captions is above chance from the cache alone, and the same model randomly initialised is not.
The teacher trains for 200 of the demo's 300 steps (measured on this world: Q2A 39.0 IQA / 39.6 IA
at 200 steps, 29.6 / 28.0 for the random one), which keeps the test's cost in `make test` down."""

import pytest
import torch
from safetensors.torch import save_file

from madcache.demo.teacher import DemoTeacherConfig, pretrain_demo_teacher
from madcache.evaluation.zeroshot import run_zero_shot
from madcache.extraction import ExtractConfig, extract
from madcache.teachers.clip import create_model


def zero_shot_of(world, checkpoint, out):
    extract(
        ExtractConfig(
            dataset="vcr",
            root=world / "vcr",
            split="val",
            teacher="madcache-demo",
            checkpoint=checkpoint,
            out=out,
            progress=False,
        )
    )
    return {name: protocol["overall"] for name, protocol in run_zero_shot(out)["protocols"].items()}


@pytest.mark.slow
def test_pretrained_demo_teacher_is_above_chance_and_a_random_one_is_not(demo_worlds, tmp_path):
    world, _ = demo_worlds("default", seed=0)
    trained = tmp_path / "trained.safetensors"
    pretrain_demo_teacher(DemoTeacherConfig(data=world, out=trained, steps=200), progress=False)
    torch.manual_seed(123)
    random = tmp_path / "random.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_model("madcache-demo").state_dict().items()},
        str(random),
    )

    good = zero_shot_of(world, trained, tmp_path / "cache-trained")
    chance = zero_shot_of(world, random, tmp_path / "cache-random")

    assert good["iqa"]["n"] == chance["iqa"]["n"] == 500  # val questions
    for prompt in ("iqa", "ia"):  # chance: 25 / 25 / 6.25
        assert good[prompt]["q2a"] >= 35 and good[prompt]["qa2r"] >= 35
        assert good[prompt]["q2a"] - chance[prompt]["q2a"] >= 7
        assert 19 <= chance[prompt]["qa2r"] <= 31 and 19 <= chance[prompt]["q2a"] <= 32
