"""Option parsing shared by the commands."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import click


def parse_key_values(pairs: tuple[str, ...], *, flag: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs given to `flag`; a VALUE that parses as JSON (true, 3, ["qa"]) is taken
    as such, anything else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


class NameChoice(click.Choice):
    """A `click.Choice` over a registry's names, read when a command parses its arguments rather
    than when it is imported: a dataset registered after import is a valid choice, and
    `madcache --help` imports no registry."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._names())


def dataset_names() -> list[str]:
    from madcache.data import DATASETS

    return DATASETS.names()
