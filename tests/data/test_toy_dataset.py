"""A dataset added from outside the package — one reader and one `DATASETS.register` line, here
in this test file — runs extract -> train -> eval -> zero-shot (and an adapter) without any
change to madcache: every stage reads what it needs from the dataset's spec.

The toy: "which caption fits the image?" over tiny PNGs; 3 captions per image, scored by
accuracy, sampled per category by group, CLIP-scored with the VCR prompts (question + caption,
caption alone) and evaluated zero-shot from the stored logits.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cli import cli
from madcache.core.errors import ConfigError, UnknownNameError
from madcache.data import DATASETS, Dataset, lowshot, metrics
from madcache.data.records import Example, ReadResult, Text

NAME = "toy-captions"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SHAPES = ("square", "stripe")
QUESTION = "What does the picture show?"
TINY_STUDENT = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=32)


class CaptionsReader:
    """`<split>.jsonl` lines {id, image, captions, label, kind} under a root; images in
    `images/<image>.png`."""

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        return [Path(root) / f"{split}.jsonl"]

    def read(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> ReadResult:
        lines = self.annotation_files(root, split)[0].read_text().splitlines()
        return ReadResult([self._example(json.loads(line), split) for line in lines])

    @staticmethod
    def _example(record: dict, split: str) -> Example:
        return Example(
            id=record["id"],
            dataset=NAME,
            split=split,
            image_id=record["image"],
            image_path=f"images/{record['image']}.png",
            context=Text.from_string(QUESTION),
            choices=tuple(Text.from_string(c) for c in record["captions"]),
            label=record["label"],
            category=record["kind"],
        )


if NAME not in DATASETS:
    DATASETS.register(
        NAME,
        Dataset(
            name=NAME,
            reader=CaptionsReader(),
            task="multiple_choice",
            score=metrics.score_accuracy,
            sample=lowshot.sample_groups,
            categories=SHAPES,
            chance={"accuracy": 100.0 / len(COLOURS)},
            teacher_logits="vcr",
            zero_shot="logits",
        ),
    )


def write_world(root: Path) -> Path:
    """6 images (3 colours x 2 shapes); per split, one question per image whose right caption
    names its colour, the captions rotated so the label varies."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            pixels = rng.integers(0, 40, (24, 24, 3)).astype(np.uint8)
            area = np.s_[4:20, 4:20] if shape == "square" else np.s_[:, 8:16]
            pixels[area] = rgb
            Image.fromarray(pixels).save(root / "images" / f"{colour}-{shape}.png")
            images.append((colour, shape))
    names = list(COLOURS)
    for split, shift in (("train", 0), ("val", 1)):
        lines = []
        for n, (colour, shape) in enumerate(images):
            captions = [f"a {c} {shape}" for c in np.roll(names, n + shift)]
            lines.append(
                json.dumps(
                    {
                        "id": f"{split}-{n}",
                        "image": f"{colour}-{shape}",
                        "captions": captions,
                        "kind": shape,
                        "label": captions.index(f"a {colour} {shape}"),
                    }
                )
            )
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def save_tiny_clip(root: Path) -> tuple[Path, Path]:
    """The tiny open_clip teacher the extraction tests build (tests/extraction/conftest.py)."""
    spec = importlib.util.spec_from_file_location(
        "extraction_conftest", str(Path(__file__).parents[1] / "extraction" / "conftest.py")
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.save_tiny_clip(root)


def run_cli(*args: Any):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """The toy world, its train and val caches (extracted through the CLI) and one region
    store for both splits."""
    from madcache.students.regions import build_region_store

    base = tmp_path_factory.mktemp("toy-captions")
    root = write_world(base / "world")
    config, checkpoint = save_tiny_clip(base / "clip")
    for split in ("train", "val"):
        run_cli(
            "extract",
            "--dataset",
            NAME,
            "--root",
            root,
            "--split",
            split,
            "--teacher",
            f"openclip-config:{config}",
            "--checkpoint",
            checkpoint,
            "--out",
            base / f"cache-{split}",
            "--format",
            "hdf5",
            "--shard-size",
            4,
            "--no-progress",
        )
    build_region_store(
        dataset=NAME,
        root=root,
        split="train,val",
        extractor="boxcrop",
        out=base / "regions",
        max_regions=4,
        format="hdf5",
        progress=False,
    )
    return base


@pytest.mark.slow
def test_a_dataset_registered_outside_the_package_runs_every_stage(toy):
    from safetensors.torch import load_file

    from madcache.cache.reader import open_cache
    from madcache.evaluation.adapters import AdapterConfig, run_adapter
    from madcache.evaluation.evaluate import evaluate_run
    from madcache.train.config import TrainConfig
    from madcache.train.loop import run_training

    # extract: the spec's protocol gave the VCR prompts' logits, `ia` for confidence weighting
    val = open_cache(toy / "cache-val")
    assert val.manifest["logits"] == ["iqa", "ia"] and val.manifest["default_logits"] == "ia"

    # train (low-shot: the spec's sampler) -> eval with the spec's metric
    run = toy / "runs" / "mad"
    trained = run_training(
        TrainConfig(
            dataset=NAME,
            root=str(toy / "world"),
            out=str(run),
            method="mad",
            cache=str(toy / "cache-train"),
            regions=str(toy / "regions"),
            per_category=2,
            seed=0,
            max_steps=2,
            batch_size=4,
            lr=1e-3,
            student_options=TINY_STUDENT,
        )
    )
    split = lowshot.Split.load(run / "split.json")
    assert split.params["unit"] == "group" and split.counts == {"square": 2, "stripe": 2}
    assert set(trained["eval"]["val"]) == {"accuracy"}
    assert (
        json.loads((run / "student" / "student.json").read_text())["options"]["task"]
        == "multiple_choice"
    )
    assert evaluate_run(run, split="val") == trained["eval"]["val"]
    with pytest.raises(ConfigError, match=f"SM\\) is not defined for dataset '{NAME}'"):
        evaluate_run(run, split="val", sm=True)

    # zero-shot (through the CLI): the arg-max of each stored logits, with the spec's chance
    zero_shot = json.loads(run_cli("eval", "--zero-shot", "--cache", toy / "cache-val").output)
    assert zero_shot["chance"] == {"accuracy": pytest.approx(100 / 3)}
    targets = val.load_targets(val.example_ids())
    labels = {ex.id: ex.label for ex in DATASETS.get(NAME).read(toy / "world", "val").examples}
    for prompt in ("iqa", "ia"):
        gold = [labels[i] for i in targets.example_ids]
        right = np.asarray(targets.logits[prompt]).argmax(1) == gold
        assert zero_shot["protocols"][prompt]["overall"] == {
            "accuracy": pytest.approx(100 * right.mean()),
            "n": 6,
        }
        assert set(zero_shot["protocols"][prompt]["by_category"]) == set(SHAPES)

    # an adapter on the cached features: one score per caption (the spec's task)
    adapter = run_adapter(
        AdapterConfig(
            dataset=NAME,
            cache=str(toy / "cache-train"),
            out=str(toy / "runs" / "adapter"),
            eval_caches={"val": str(toy / "cache-val")},
            epochs=3,
            hidden=8,
            heads=2,
        )
    )
    assert set(adapter["eval"]["val"]) == {"accuracy"}
    head = load_file(str(toy / "runs" / "adapter" / "adapter.safetensors"))
    assert head["body.weight"].shape[0] == 1


@pytest.mark.slow
def test_the_cli_offers_a_dataset_registered_after_import(toy):
    stats = json.loads(
        run_cli(
            "data",
            "stats",
            "--dataset",
            NAME,
            "--root",
            toy / "world",
            "--split",
            "train",
            "--json",
        ).output
    )
    assert (stats["examples"], stats["images"]) == (6, 6)
    assert stats["categories"] == {"square": 3, "stripe": 3}


def test_the_cli_lists_registered_datasets_for_an_unknown_one(tmp_path):
    result = CliRunner().invoke(
        cli, ["data", "stats", "--dataset", "nope", "--root", str(tmp_path), "--split", "train"]
    )
    assert result.exit_code == 2
    assert (
        "'nope' is not one of" in result.output
        and f"'{NAME}'" in result.output
        and "'vcr'" in result.output
    )


def test_a_spec_is_checked_when_it_is_built():
    with pytest.raises(ConfigError, match="unknown task 'ranking'; valid: multiple_choice"):
        replace(DATASETS.get(NAME), task="ranking")
    with pytest.raises(ConfigError, match="classification dataset needs label_names"):
        replace(DATASETS.get(NAME), task="classification")


def test_an_unknown_teacher_logit_protocol_lists_the_valid_ones(tmp_path):
    from madcache.extraction import ExtractConfig

    with pytest.raises(
        UnknownNameError, match="teacher-logit protocol 'clip'. Available: none, snli-ve, vcr, vqa"
    ):
        ExtractConfig(dataset=NAME, root=tmp_path, split="train", teacher="t", protocol="clip")
    with pytest.raises(UnknownNameError, match=f"unknown dataset 'nope'. Available: .*{NAME}.*vcr"):
        ExtractConfig(dataset="nope", root=tmp_path, split="train", teacher="t")


def test_the_student_task_and_classes_come_from_the_spec():
    from types import SimpleNamespace

    from madcache.train.config import TrainConfig
    from madcache.train.setup import student_defaults

    store = SimpleNamespace(feature_dim=7)
    if "toy-yes-no" not in DATASETS:
        DATASETS.register(
            "toy-yes-no",
            replace(
                DATASETS.get(NAME),
                name="toy-yes-no",
                task="classification",
                label_names=("yes", "no"),
            ),
        )
    for dataset, expected in (
        (NAME, {"task": "multiple_choice"}),
        ("snli-ve", {"task": "classification", "num_classes": 3}),
        ("toy-yes-no", {"task": "classification", "num_classes": 2}),
        ("vqa", {"task": "multilabel"}),
    ):
        config = TrainConfig(dataset=dataset, root=".", out="o")
        assert student_defaults(config, None, store) == {"region_dim": 7, **expected}


def test_low_shot_sampling_uses_the_spec_of_the_examples_dataset():
    examples = CaptionsReader._example  # one record -> one Example of this dataset
    pool = [
        examples(
            {
                "id": f"x{i}",
                "image": f"im{i // 2}",
                "captions": ["a", "b"],
                "label": 0,
                "kind": SHAPES[i % 2],
            },
            "train",
        )
        for i in range(8)
    ]
    split = lowshot.sample_per_category(pool, k=1, seed=0)
    assert split.params["unit"] == "group" and split.counts == {"square": 1, "stripe": 1}
    with pytest.raises(UnknownNameError, match="unknown dataset 'unregistered'"):
        lowshot.sample_per_category([replace(pool[0], dataset="unregistered")], k=1, seed=0)
