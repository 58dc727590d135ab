"""Typed configs: values checked against the dataclass annotations and ranges, errors naming the
key; the one KEY=VALUE parser."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from madcache.core.config import (
    check_ranges,
    check_value,
    config_from_dict,
    parse_key_values,
    setting,
)
from madcache.core.errors import ConfigError, ConfigValueError


@dataclass
class Inner:
    size: int = 1


@dataclass
class Example:
    name: str
    lr: float = setting(0.1, above=0, help="A rate.")
    steps: int = setting(1, minimum=1, help="Steps.")
    resume: bool = False
    limit: int | None = None
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    where: Path | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        check_ranges(self)


def build(**values):
    return config_from_dict(
        Example, {"name": "x", **values}, noun="key", where="f.toml: ", table="train"
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lr": "fast"}, "f.toml: train.lr: expected a number, got 'fast'"),
        ({"lr": True}, "train.lr: expected a number, got True"),
        ({"lr": float("inf")}, "train.lr: expected a finite number, got inf"),
        ({"steps": "3"}, "train.steps: expected an integer, got '3'"),
        ({"steps": 2.0}, "train.steps: expected an integer, got 2.0"),
        ({"resume": "no"}, "train.resume: expected true or false, got 'no'"),
        ({"resume": 1}, "train.resume: expected true or false, got 1"),
        ({"name": 3}, "train.name: expected a string, got 3"),
        ({"limit": "10"}, "train.limit: expected an integer, got '10'"),
        ({"kind": "c"}, "train.kind: expected one of 'a', 'b', got 'c'"),
        ({"tags": "qa"}, "train.tags: expected a list, got 'qa'"),
        ({"tags": ["qa", 1]}, r"train.tags\[1\]: expected a string, got 1"),
        ({"options": [1]}, "train.options: expected a table, got \\[1\\]"),
        ({"paths": {"val": 3}}, "train.paths.val: expected a string, got 3"),
        ({"where": 3}, "train.where: expected a path, got 3"),
        ({"inner": {"size": "big"}}, "train.inner.size: expected an integer, got 'big'"),
        ({"lr": 0}, "train.lr: must be > 0, got 0"),
        ({"steps": 0}, "train.steps: must be >= 1, got 0"),
    ],
)
def test_wrong_values_are_refused_naming_the_key(values, message):
    with pytest.raises(ConfigValueError, match=message):
        build(**values)


def test_right_values_pass_and_are_normalised():
    config = build(lr=1, limit=None, tags=["a"], options={"k": [1]}, where="out", inner={"size": 3})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.where == Path("out") and config.inner == Inner(3)
    assert (config.limit, config.tags, config.options) == (None, ["a"], {"k": [1]})


def test_unknown_and_missing_keys_are_named():
    with pytest.raises(ConfigError, match="f.toml: unknown key\\(s\\) colour; valid: .*lr"):
        build(colour=1)
    with pytest.raises(ConfigError, match="missing key\\(s\\) train.name"):
        config_from_dict(Example, {}, noun="key", table="train")


def test_ranges_hold_for_configs_built_in_python():
    with pytest.raises(ConfigValueError, match="^steps: must be >= 1, got -2"):
        Example(name="x", steps=-2)


def test_check_value_alone():
    assert check_value(list[int | Literal["full"]], [1, "full"], key="shots") == [1, "full"]
    with pytest.raises(ConfigValueError, match="p.toml: shots: expected a list, got 8"):
        check_value(list[int], 8, key="shots", where="p.toml: ")
    assert check_value(tuple[int, str], [1, "a"], key="pair") == (1, "a")
    with pytest.raises(ConfigValueError, match=r"pair\[1\]: expected a string, got 2"):
        check_value(tuple[int, str], [1, 2], key="pair")
    with pytest.raises(ConfigValueError, match="pair: expected a list of 2 values, got \\[1\\]"):
        check_value(tuple[int, str], [1], key="pair")


def test_key_values_parse_json_or_keep_strings():
    parsed = parse_key_values(
        ["a=3", "b=true", 'c=["qa"]', "d=cache/val", "e=1=2"], option="--student-option"
    )
    assert parsed == {"a": 3, "b": True, "c": ["qa"], "d": "cache/val", "e": "1=2"}
    assert parse_key_values(["val=123"], option="--eval-cache", as_json=False) == {"val": "123"}
    with pytest.raises(ConfigError, match="^--set: expected KEY=VALUE, got 'seeds'$"):
        parse_key_values(["seeds"], option="--set")
    with pytest.raises(ConfigError, match=r"^--set seeds=\[0,1: not valid JSON"):
        parse_key_values(["seeds=[0,1"], option="--set")
