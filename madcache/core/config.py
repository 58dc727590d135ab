"""Typed config dataclasses are the single source of truth: flags and TOML only supply values."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from madcache.core.errors import ConfigError

C = TypeVar("C")


def config_from_dict(cls: type[C], values: Mapping[str, Any], *, noun: str, where: str = "",
                     hidden: frozenset[str] = frozenset()) -> C:
    """`cls(**values)`, refusing unknown keys by name ("{where}unknown {noun}(s) ...", listing the
    valid ones less `hidden`) and turning a wrong call into a `ConfigError`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}unknown {noun}(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(known - hidden))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where or noun}: {exc}") from None
