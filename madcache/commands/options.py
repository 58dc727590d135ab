"""Option parsing shared by the commands."""

from __future__ import annotations

import json
from typing import Any

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
