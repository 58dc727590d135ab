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
    assert ExtractConfig.from_dict({**values, "out": "s3://bkt/c/vcr"}).output_path() == \
        "s3://bkt/c/vcr"
    assert ExtractConfig.from_dict({**values, "out": "rel/c"}).output_path() == Path("rel/c")
