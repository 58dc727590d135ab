"""`ExtractConfig` built from user values: types checked with the option named."""

from __future__ import annotations

from pathlib import Path

import pytest

from madcache.core.errors import ConfigError
from madcache.extraction import ExtractConfig

VALUES = {"dataset": "vcr", "root": "data/vcr", "split": "train", "teacher": "madcache-demo"}


def test_values_are_checked_naming_the_option():
    with pytest.raises(ConfigError, match="^batch_size: expected an integer, got '8'$"):
        ExtractConfig.from_dict({**VALUES, "batch_size": "8"})
    with pytest.raises(ConfigError, match="^format: expected one of 'zarr', 'hdf5', got 'npy'$"):
        ExtractConfig.from_dict({**VALUES, "format": "npy"})
    with pytest.raises(ConfigError, match="^skip_bad: expected true or false, got 'yes'$"):
        ExtractConfig.from_dict({**VALUES, "skip_bad": "yes"})
    with pytest.raises(ConfigError, match="unknown extract option\\(s\\) shards"):
        ExtractConfig.from_dict({**VALUES, "shards": 3})
    config = ExtractConfig.from_dict({**VALUES, "out": "cache/x"})
    assert config.root == Path("data/vcr") and config.out == Path("cache/x")


def test_an_object_store_out_stays_a_url():
    values = dict(dataset="vcr", root="/data", split="val", teacher="madcache-demo")
    assert (
        ExtractConfig.from_dict({**values, "out": "s3://bkt/c/vcr"}).output_path()
        == "s3://bkt/c/vcr"
    )
    assert ExtractConfig.from_dict({**values, "out": "rel/c"}).output_path() == Path("rel/c")


def test_extract_flags_are_the_config_fields_with_their_defaults():
    import dataclasses

    from madcache.commands.extract import extract

    flags = {p.name: p for p in extract.params if not p.hidden}
    fields = {f.name: f for f in dataclasses.fields(ExtractConfig)}
    assert set(flags) == set(fields)
    assert flags["read_options"].opts == ["--read-option"] and flags["format"].opts == ["--format"]
    assert [n for n, p in flags.items() if p.required] == ["dataset", "root", "split"]
    config = ExtractConfig(dataset="vcr", root=Path("data"), split="val", teacher="t")
    assert (config.batch_size, config.shard_size, config.device, config.progress) == (
        64,
        1024,
        "auto",
        True,
    )


@pytest.mark.parametrize(
    "flag,value",
    [("--batch-size", "0"), ("--workers", "-1"), ("--dtype", "float64"), ("--rank", "x")],
)
def test_a_bad_extract_flag_is_exit_2_naming_the_flag(tmp_path, flag, value):
    from click.testing import CliRunner

    from madcache.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "extract",
            "--dataset",
            "vcr",
            "--root",
            str(tmp_path),
            "--split",
            "val",
            "--teacher",
            "madcache-demo",
            flag,
            value,
        ],
    )
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1 and f"'{flag}'" in errors[0]


def test_each_protocol_names_its_default_logits():
    from madcache.extraction.protocols import PROTOCOLS

    assert {name: PROTOCOLS.get(name).default_logits for name in PROTOCOLS.names()} == {
        "none": "",
        "vcr": "ia",
        "snli-ve": "kmeans",
        "vqa": "template",
    }
    assert ExtractConfig.from_dict(VALUES).logits_default == "ia"
    assert ExtractConfig.from_dict({**VALUES, "default_logits": "iqa"}).logits_default == "iqa"


@pytest.mark.parametrize(
    "requested, device, env, expected",
    [
        (3, "cuda:0", {}, 3),
        (0, "cuda", {}, 0),
        (None, "cpu", {}, 0),
        (None, "cuda:0", {}, 15),
        (None, "cuda:1", {"LOCAL_WORLD_SIZE": "2"}, 7),
        (None, "cuda:7", {"LOCAL_WORLD_SIZE": "32"}, 0),
    ],
)
def test_workers_default_to_the_cores_on_cuda_only(requested, device, env, expected):
    """--workers, else on CUDA this process's share of the cores less one (the process that
    feeds the GPU); on the CPU 0, the forward keeping the cores."""
    from madcache.extraction.jobs import preprocess_workers

    assert preprocess_workers(requested, device, cores=16, environ=env) == expected
    assert preprocess_workers(None, "cuda") >= 0  # this machine's cores
    config = ExtractConfig(dataset="vcr", root=Path("data"), split="val", teacher="t")
    assert config.workers is None
