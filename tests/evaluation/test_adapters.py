"""Adapters on frozen cached features: they learn a linearly separable toy task well above
chance, are seeded, use low-shot split files, and write a run directory in the trainer's
contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from madcache.core.errors import ConfigError, OutputLocationError, RunDirectoryError
from madcache.evaluation.adapters import ADAPTERS, AdapterConfig, adapter_head, run_adapter

DV, DT = 8, 6


def write_cache(path, *, dataset, ids, labels, categories, groups, image, text, split):
    """One shard; `image` [N, DV], `text` [N, C, DT] (one image and C texts per example)."""
    from madcache.cache.writer import CacheWriter

    n, c = text.shape[:2]
    arrays = {
        "example_id": np.array(ids, dtype=str),
        "image_id": np.array([f"img{i}" for i in range(n)], dtype=str),
        "image_feat": image.astype(np.float16),
        "text_key": np.array([f"t{i}" for i in range(n * c)], dtype=str),
        "text_eos": text.reshape(n * c, -1).astype(np.float16),
        "example_image": np.arange(n, dtype=np.int64),
        "example_texts": np.arange(n * c, dtype=np.int64).reshape(n, c),
    }
    manifest = {
        "fingerprint": {"dataset": {"name": dataset, "split": split}},
        "dataset": dataset,
        "split": split,
        "num_choices": c,
        "dims": {"image": DV, "text": DT},
        "settings": {},
        "teachers": {"vision": "toy", "text": "toy"},
        "num_shards": 1,
    }
    writer = CacheWriter.open(path, manifest=manifest, format="hdf5")
    writer.write_shard(
        0, arrays, index_columns={"category": categories, "label": labels, "group": groups}
    )
    writer.finish()
    return str(path)


def vcr_cache(path, n_questions, split, seed):
    """The correct choice's text has +1 on feature 0, the wrong ones -1 (plus noise)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_questions
    labels = rng.integers(0, 4, n)
    text = rng.normal(scale=0.3, size=(n, 4, DT))
    text[:, :, 0] -= 1.0
    text[np.arange(n), labels, 0] += 2.0
    ids = [f"q{i // 2}:{'qa' if i % 2 == 0 else 'qar'}" for i in range(n)]
    categories = ["activity" if (i // 2) % 2 else "mental" for i in range(n)]
    return write_cache(
        path,
        dataset="vcr",
        ids=ids,
        labels=labels.tolist(),
        categories=categories,
        groups=[f"q{i // 2}" for i in range(n)],
        image=rng.normal(size=(n, DV)),
        text=text,
        split=split,
    )


def snli_cache(path, n, split, seed):
    """Class k's hypotheses sit near a class mean in text space."""
    rng = np.random.default_rng(seed)
    means = np.eye(3, DT) * 2.0
    labels = rng.integers(0, 3, n)
    text = (means[labels] + rng.normal(scale=0.4, size=(n, DT)))[:, None, :]
    return write_cache(
        path,
        dataset="snli-ve",
        ids=[f"p{i}" for i in range(n)],
        labels=labels.tolist(),
        categories=[f"c{k}" for k in labels],
        groups=[""] * n,
        image=rng.normal(size=(n, DV)),
        text=text,
        split=split,
    )


@pytest.fixture(scope="module")
def vcr_caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr")
    return vcr_cache(root / "train", 60, "train", 0), vcr_cache(root / "val", 40, "val", 1)


@pytest.mark.parametrize("method", ADAPTERS.names())
def test_adapters_learn_vcr_toy_task_and_write_a_run_dir(tmp_path, vcr_caches, method):
    train, val = vcr_caches
    out = tmp_path / "run"
    metrics = run_adapter(
        AdapterConfig(
            dataset="vcr",
            cache=train,
            out=str(out),
            method=method,
            eval_caches={"val": val},
            epochs=40,
            seed=3,
            hidden=32,
            heads=2,
            lr=3e-3,
        )
    )
    scores = metrics["eval"]["val"]
    assert set(scores) == {"q2a", "qa2r", "q2ar"}
    assert scores["q2a"] > 80 and scores["qa2r"] > 80 and scores["q2ar"] > 60  # chance 25/25/6
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "complete" and saved["method"] == method
    assert saved["seed"] == 3 and saved["student"] == "frozen-teacher"
    assert saved["teachers"] == {"vision": "toy", "text": "toy"}
    assert set(saved["provenance"]) >= {"cache_fingerprint", "split_file", "git_commit"}
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["cache"] == train
    assert (out / "adapter.safetensors").is_file()


def test_snli_ve_adapter_is_a_three_way_classifier(tmp_path):
    train = snli_cache(tmp_path / "train", 90, "train", 0)
    val = snli_cache(tmp_path / "val", 60, "val", 1)
    metrics = run_adapter(
        AdapterConfig(
            dataset="snli-ve",
            cache=train,
            out=str(tmp_path / "r"),
            eval_caches={"val": val},
            epochs=40,
            lr=3e-3,
        )
    )
    assert metrics["eval"]["val"]["accuracy"] > 80  # chance 33.3


def test_same_seed_same_result_and_low_shot_split_file(tmp_path, vcr_caches):
    from madcache.data.lowshot import Split

    train, val = vcr_caches
    split = Split(
        dataset="vcr",
        source_split="train",
        params={"per_category": 3, "seed": 1},
        ids=["q0:qa", "q0:qar", "q1:qa", "q1:qar"],
        counts={"a": 2},
        example_counts={"a": 4},
    )
    path = split.save(tmp_path / "split.json")
    runs = [
        run_adapter(
            AdapterConfig(
                dataset="vcr",
                cache=train,
                out=str(tmp_path / f"r{i}"),
                eval_caches={"val": val},
                split_file=str(path),
                per_category=3,
                epochs=5,
                seed=1,
            )
        )
        for i in range(2)
    ]
    assert runs[0]["eval"] == runs[1]["eval"]
    assert runs[0]["history"] == runs[1]["history"]
    assert runs[0]["shots"] == 3
    assert runs[0]["provenance"]["split_file"] == str(path)


def test_per_category_sampling_from_the_cache_index(tmp_path, vcr_caches):
    train, _ = vcr_caches
    metrics = run_adapter(
        AdapterConfig(dataset="vcr", cache=train, out=str(tmp_path / "r"), per_category=2, epochs=2)
    )
    from madcache.data.lowshot import Split

    split = Split.load(metrics["provenance"]["split_file"])
    assert split.counts == {"activity": 2, "mental": 2} and len(split.ids) == 8


def test_head_shapes():
    image, text = torch.zeros(5, DV), torch.zeros(5, 4, DT)
    for kind in ADAPTERS:
        assert adapter_head(kind, DV, DT, 1, hidden=8, heads=2)(image, text).shape == (5, 4)
        assert adapter_head(kind, DV, DT, 3, hidden=8, heads=2)(image, text[:, :1]).shape == (5, 3)


def test_output_layout_follows_the_dataset_task():
    from madcache.data import DATASETS
    from madcache.evaluation.adapters import output_size

    assert output_size(DATASETS.get("vcr"), None) == 1  # one score per choice
    assert output_size(DATASETS.get("snli-ve"), None) == 3  # one per label name
    assert output_size(DATASETS.get("vqa"), ["yes", "no", "2"]) == 3  # one per answer


def test_config_rejects_unknown_keys_and_adapters():
    with pytest.raises(ConfigError, match="unknown adapter config key.*colour"):
        AdapterConfig.from_dict({"dataset": "vcr", "cache": "c", "out": "o", "colour": 1})
    with pytest.raises(ConfigError, match="Available: adapter-linear"):
        AdapterConfig(dataset="vcr", cache="c", out="o", method="adapter-huge")


def test_config_values_are_type_checked_naming_the_key():
    values = {"dataset": "vcr", "cache": "c", "out": "o"}
    with pytest.raises(ConfigError, match="^adapter.epochs: expected an integer, got '3'$"):
        AdapterConfig.from_dict({**values, "epochs": "3"})
    with pytest.raises(ConfigError, match="^adapter.normalize: expected true or false, got 'no'$"):
        AdapterConfig.from_dict({**values, "normalize": "no"})
    with pytest.raises(ConfigError, match="^adapter.lr: must be > 0, got 0"):
        AdapterConfig.from_dict({**values, "lr": 0})
    assert AdapterConfig.from_dict({**values, "lr": 1}).lr == 1.0


def test_train_command_runs_an_adapter_method(tmp_path, vcr_caches):
    from click.testing import CliRunner

    from madcache.cli import cli

    train, val = vcr_caches
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--method",
            "adapter-linear",
            "--dataset",
            "vcr",
            "--cache",
            train,
            "--eval-cache",
            f"val={val}",
            "--epochs",
            "40",
            "--lr",
            "3e-3",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "adapter-linear" and saved["eval"]["val"]["q2a"] > 60  # chance 25
    refused = CliRunner().invoke(
        cli,
        [
            "train",
            "--method",
            "adapter-mlp3",
            "--dataset",
            "vcr",
            "--cache",
            train,
            "--regions",
            "r",
            "--out",
            str(out),
        ],
    )
    assert refused.exit_code == 2 and "does not take regions" in refused.output


# ----------------------------------------------------------------------------- the run directory


def small_run(out, train, val, **settings):
    return AdapterConfig(
        **{
            "dataset": "vcr",
            "cache": train,
            "out": str(out),
            "eval_caches": {"val": val},
            "epochs": 2,
            **settings,
        }
    )


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_an_adapter_run_writes_the_training_run_files(tmp_path, vcr_caches):
    """config.json and inputs.json (the digests a resume compares), split.json when sampled,
    metrics.json: the files of a training run (train/rundir.py), plus the head's weights."""
    from madcache.train.rundir import CONFIG, INPUTS, METRICS, SPLIT

    train, val = vcr_caches
    out = tmp_path / "run"
    metrics = run_adapter(small_run(out, train, val, per_category=2))
    assert {p.name for p in out.iterdir()} == {
        CONFIG,
        INPUTS,
        METRICS,
        SPLIT,
        "adapter.safetensors",
    }
    inputs = json.loads((out / INPUTS).read_text())
    assert inputs["cache_fingerprint"] == metrics["provenance"]["cache_fingerprint"]
    assert inputs["split_digest"] == metrics["provenance"]["split_digest"]
    assert json.loads((out / CONFIG).read_text())["per_category"] == 2


def test_an_adapter_refuses_a_used_or_non_empty_directory(tmp_path, vcr_caches):
    train, val = vcr_caches
    out = tmp_path / "run"
    run_adapter(small_run(out, train, val))
    before = snapshot(out)
    with pytest.raises(RunDirectoryError, match="already holds a run; pass --resume"):
        run_adapter(small_run(out, train, val))
    assert snapshot(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(RunDirectoryError, match=r"is not empty \(notes.txt\)"):
        run_adapter(small_run(mine, train, val))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(OutputLocationError, match="would overwrite the input"):
        run_adapter(small_run(tmp_path / "run2", train, str(tmp_path / "run2")))


def test_an_adapter_resume_with_another_setting_is_refused(tmp_path, vcr_caches):
    """As for a training run: every result-changing setting is named, before anything is
    written; the evaluated caches may change (a sweep that adds an eval)."""
    train, val = vcr_caches
    out = tmp_path / "run"
    run_adapter(small_run(out, train, val))
    before = snapshot(out)
    with pytest.raises(ConfigError, match="other settings: epochs: run 2, now 3; lr: run "):
        run_adapter(small_run(out, train, val, resume=True, epochs=3, lr=0.5))
    assert snapshot(out) == before
    again = run_adapter(
        small_run(out, train, val, resume=True, eval_caches={"val": val, "train": train})
    )
    assert set(again["eval"]) == {"val", "train"}


def test_an_adapter_overwrite_trains_again(tmp_path, vcr_caches):
    train, val = vcr_caches
    out = tmp_path / "run"
    run_adapter(small_run(out, train, val))
    (out / "notes.txt").write_text("keep")
    metrics = run_adapter(small_run(out, train, val, overwrite=True, seed=5))
    assert metrics["seed"] == 5 and (out / "notes.txt").read_text() == "keep"
    assert json.loads((out / "config.json").read_text())["seed"] == 5
