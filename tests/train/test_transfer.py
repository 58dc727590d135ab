"""Transfer diagnostics (train/transfer.py) on hand-computed cases, and in a demo run's
metrics.json and report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from madcache.data.records import Example, Text
from madcache.method.losses import Projections
from madcache.students.base import RegionInputs, StudentOutput
from madcache.train.transfer import centred_cosine, feature_fit, r2, transfer_report


def test_a_perfect_a_mean_only_and_a_scaled_predictor():
    target = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    mean = target.mean(dim=0)
    assert feature_fit(target, target, None) == {"centred_cosine": 1.0, "r2": 1.0}
    only_mean = mean.expand_as(target)
    assert r2(only_mean, target, mean) == 0.0 and centred_cosine(only_mean, target, mean) == 0.0
    # twice the right direction: cosine 1, R^2 = 1 - sum(t^2) / sum(t^2) = 0
    assert centred_cosine(2 * target, target, mean) == pytest.approx(1.0)
    assert r2(2 * target, target, mean) == pytest.approx(0.0)
    # the training targets' mean, off by (1, 1): R^2 = 1 - (1 + 5 + 2 + 10) / (1 + 1 + 4 + 4)
    fit = feature_fit(target, target, torch.tensor([1.0, 1.0]))
    assert fit["mean_only_r2"] == pytest.approx(1 - 18 / 10)


class Echo(nn.Module):
    """A stand-in student: V_s is the one-hot of the example's label for every choice, T_s the
    one-hot of the choice, so cos(V_s, T_s,c) picks the label."""

    hidden_size, task = 3, "multiple_choice"

    def prepare(self, examples, regions):
        return {"labels": torch.tensor([ex.label for ex in examples])}

    def forward(self, inputs):
        labels = inputs["labels"]
        image = nn.functional.one_hot(labels, 3).float()[:, None].expand(-1, 3, -1)
        text = torch.eye(3)[None].expand(len(labels), -1, -1)
        return StudentOutput(
            logits=torch.zeros(len(labels), 3),
            image_token=image,
            cls_token=text,
            text_tokens=text[:, :, None],
            token_spans=torch.zeros(len(labels), 3, 1, 2, dtype=torch.long),
        )


def test_the_report_of_a_student_whose_features_are_the_teachers():
    examples = [
        Example(
            id=f"e{i}",
            dataset="vcr",
            split="val",
            image_id=f"i{i}",
            image_path="",
            choices=tuple(Text.from_string(w) for w in "abc"),
            label=i % 3,
            category="x",
        )
        for i in range(6)
    ]
    projections = Projections(3, {"vision": 3, "text": 3})
    for layer in (projections.vision, projections.text):
        nn.init.eye_(layer.weight)
        nn.init.zeros_(layer.bias)
    targets = type(
        "T",
        (),
        {
            "image": nn.functional.one_hot(torch.arange(6) % 3, 3).float(),
            "text_eos": torch.eye(3)[None].expand(6, -1, -1),
        },
    )()

    def regions(batch):
        return RegionInputs(
            torch.zeros(len(batch), 1, 1),
            torch.zeros(len(batch), 1, 4),
            torch.ones(len(batch), 1, dtype=torch.bool),
        )

    report = transfer_report(
        Echo(),
        projections,
        examples,
        targets,
        train_means={"image": torch.zeros(3)},
        regions=regions,
        batch_size=4,
        device="cpu",
        multiple_choice=True,
    )
    assert report["examples"] == 6 and report["distilled_zero_shot"] == 100.0
    assert report["image"]["r2"] == pytest.approx(1.0)
    assert report["image"]["centred_cosine"] == pytest.approx(1.0)
    assert report["image"]["mean_only_r2"] < 0
    assert report["text"]["r2"] == pytest.approx(1.0) and "mean_only_r2" not in report["text"]


def test_input_probe_recovers_a_linear_map_and_not_noise():
    from madcache.train.transfer import input_probe

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=generator)
    mix = torch.randn(6, 3, generator=generator)
    y = x @ mix + 2.0
    fit = input_probe(x[:300], y[:300], x[300:], y[300:], ridge=1e-6)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-4)
    assert fit["centred_cosine"] == pytest.approx(1.0, abs=1e-4)
    noise = torch.randn(400, 3, generator=generator)
    blind = input_probe(x[:300], noise[:300], x[300:], noise[300:], ridge=1e-6)
    assert blind["r2"] < 0.05 and abs(blind["centred_cosine"]) < 0.15
    assert (fit["train_rows"], fit["eval_rows"]) == (300, 100)


def test_region_vectors_zero_the_padding_and_append_the_mean():
    from madcache.students.base import RegionInputs
    from madcache.train.transfer import region_vectors

    feat = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    boxes = torch.ones(1, 2, 4)
    vectors = region_vectors(RegionInputs(feat, boxes, torch.tensor([[True, False]])))
    assert vectors.tolist() == [[1.0, 2.0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1.0, 2.0]]
