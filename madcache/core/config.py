"""Typed config dataclasses are the single source of truth: TOML tables, `--set KEY=VALUE` and
the click flags only supply values.

A setting is a dataclass field; `setting(...)` gives it its help text (the help of the flag
generated from it) and the range its value must lie in. `config_from_dict` checks each value
against the field's annotation and range before it builds the dataclass, naming the key in the
error (`train.lr: expected a number, got 'fast'`), and refuses unknown keys. `parse_key_values`
is the one parser of every `KEY=VALUE` option.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import tomllib

from madcache.core.errors import ConfigError, ConfigValueError

C = TypeVar("C")


MAX_THREADS = 256  # the most CPU threads a command may ask torch for (it starts them at once)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Any = dataclasses.MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    flag: str | None = None,
    existing_file: bool = False,
    existing_path: bool = False,
    metavar: str | None = None,
    names: str | None = None,
    short: str | None = None,
    deprecated: tuple[str, ...] = (),
) -> Any:
    """A config field: its default (or `factory`), its help text, and its range: `minimum` /
    `maximum` (inclusive), `above` / `below` (exclusive). `flag` renames its click flag (`--flag`; a table
    field becomes a repeatable `--flag KEY=VALUE`); `existing_file` makes the flag check that the
    path is a file, `existing_path` that it exists (a file or a folder); `metavar` is the
    flag's placeholder in `--help`. `names`: the kind of registry entry the value names
    ("dataset", "student", "method", "teacher", ...; its flag accepts and lists that registry's
    names). `short`: a one-letter alias (`-j`); `deprecated`: old spellings of the flag that
    still work, hidden from `--help` (a documented command used them)."""
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "flag": flag,
        "existing_file": existing_file,
        "existing_path": existing_path,
        "metavar": metavar,
        "names": names,
        "short": short,
        "deprecated": tuple(deprecated),
    }
    return dataclasses.field(
        default=default,
        default_factory=factory,
        metadata={
            k: v for k, v in metadata.items() if v is not None and v is not False and v != ()
        },
    )


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_from_dict(
    cls: type[C],
    values: Mapping[str, Any],
    *,
    noun: str,
    where: str = "",
    table: str = "",
    hidden: frozenset[str] = frozenset(),
) -> C:
    """`cls(**values)` with every value checked (`check_values`). Unknown keys are refused by
    name ("{where}unknown {noun}(s) ...", listing the valid ones less `hidden`), so are missing
    required ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}unknown {noun}(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(known - hidden))}"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"{where}missing {noun}(s) {', '.join(_dotted(table, m) for m in missing)}"
        )
    return cls(**check_values(cls, values, where=where, table=table))


def check_values(
    cls: type, values: Mapping[str, Any], *, where: str = "", table: str = ""
) -> dict[str, Any]:
    """`values` (some fields of the dataclass `cls`) checked against the fields' annotations
    and ranges; ints given for floats become floats. An error names the key as `table.key`,
    after `where` (a file or an option)."""
    types_, fields = field_types(cls), {f.name: f for f in dataclasses.fields(cls)}
    checked = {}
    for name, value in values.items():
        key = _dotted(table, name)
        try:
            value = _check(types_[name], value, key)
            check_range(fields[name], value, key=key)
        except ConfigValueError as exc:
            raise ConfigValueError(exc.key, exc.problem, where=where) from None
        checked[name] = value
    return checked


def check_value(hint: Any, value: Any, *, key: str, where: str = "") -> Any:
    """`value` if it is of type `hint` (bool strictly; an int is a number, made a float; a dict
    builds a nested dataclass), else a `ConfigValueError` naming `key` after `where`."""
    try:
        return _check(hint, value, key)
    except ConfigValueError as exc:
        raise ConfigValueError(exc.key, exc.problem, where=where) from None


def _check(hint: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        return _check_union(hint, args, value, key)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            fixed = origin is tuple and len(args) > 1 and args[-1] is not Ellipsis
            if fixed and len(value) != len(args):
                raise ConfigValueError(
                    key, f"expected a list of {len(args)} values, got {_show(value)}"
                )
            items = args if fixed else [args[0] if args else Any] * len(value)
            checked = [
                _check(item, v, f"{key}[{i}]") for i, (item, v) in enumerate(zip(items, value))
            ]
            return checked if origin is list else tuple(checked)
    elif origin is dict or hint is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            item = args[1] if args else Any
            return {k: _check(item, v, f"{key}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return config_from_dict(hint, value, noun=f"key in [{key}]", table=key)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigValueError(key, f"expected a finite number, got {value}")
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigValueError(key, f"expected {describe(hint)}, got {_show(value)}")


def _check_union(hint: Any, args: tuple, value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    for arm in (a for a in args if a is not type(None)):
        try:
            return _check(arm, value, key)
        except ConfigValueError as exc:
            if exc.key != key:  # inside a list/table that matched: the precise error
                raise
    raise ConfigValueError(key, f"expected {describe(hint)}, got {_show(value)}")


def check_range(field: dataclasses.Field, value: Any, *, key: str) -> None:
    """Refuse a number outside the field's `minimum` / `above` / `below` (see `setting`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    minimum, maximum, above, below = (
        field.metadata.get(k) for k in ("minimum", "maximum", "above", "below")
    )
    if minimum is not None and value < minimum:
        raise ConfigValueError(key, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigValueError(key, f"must be <= {maximum}, got {value}")
    if above is not None and value <= above:
        raise ConfigValueError(key, f"must be > {above}, got {value}")
    if below is not None and value >= below:
        raise ConfigValueError(key, f"must be < {below}, got {value}")


def check_ranges(config: Any) -> None:
    """`check_range` on every field of a built config (its `__post_init__` calls this, so a
    config built in Python is held to the same ranges as one loaded from a file)."""
    for f in dataclasses.fields(config):
        check_range(f, getattr(config, f.name), key=f.name)


def describe(hint: Any) -> str:
    """What a value of type `hint` is, in the words of an error message."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a table"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
    }
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(table: str, name: str) -> str:
    return f"{table}.{name}" if table else name


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables. A missing file, bytes that are not UTF-8 or a syntax error are one
    `ConfigError` naming the file (and the line and column of a syntax error)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def changed_settings(
    recorded: Mapping[str, Any], wanted: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """The settings of `wanted` that a finished output recorded (`recorded`: its summary) with
    another value: name -> (recorded, wanted). Empty: the output may be reused as it is."""
    return {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}


# ----------------------------------------------------------------------------- KEY=VALUE


def parse_key_values(pairs: Iterable[str], *, option: str, as_json: bool = True) -> dict[str, Any]:
    """`KEY=VALUE` pairs given to `option` (`--set`, `--student-option`, ...). A VALUE that
    parses as JSON (true, 3, ["qa"]) is taken as such, anything else as a string; with
    `as_json=False` every VALUE stays a string."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, value = split_key_value(pair, option=option)
        parsed[key] = parse_value(value, option=f"{option} {key}") if as_json else value
    return parsed


def split_key_value(pair: str, *, option: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option}: expected KEY=VALUE, got {pair!r}")
    return key.strip(), value


def parse_value(text: str, *, option: str) -> Any:
    """JSON when `text` is JSON, else the string; a list or table that is not valid JSON is an
    error naming `option` (a string was surely not meant)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip()[:1] in ("[", "{"):
            raise ConfigError(
                f"{option}={text}: not valid JSON ({exc.msg}); write lists as "
                "[1, 2] and strings in them quoted"
            ) from None
        return text
