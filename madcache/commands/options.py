"""Click options generated from a config dataclass: one flag per setting, whose name, type,
range and help come from the field (`madcache.core.config.setting`), so a new field is a new
typed flag. Unset flags are None and supply nothing (a TOML file's value, or the field's default,
stands). `madcache train`, `madcache extract` and `madcache regions` get their flags here."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar, Union, get_args, get_origin

import click

from madcache.core.config import field_types, parse_key_values, parse_value

F = TypeVar("F", bound=Callable[..., Any])


def config_options(cls: type, *, skip: tuple[str, ...] = (),
                   replace: Mapping[str, Mapping[str, Any]] = {},
                   required: bool = False) -> Callable[[F], F]:
    """Decorate a click command with a flag for each field of `cls` (less `skip`), in field
    order. `replace` updates the click arguments of a flag (e.g. wider choices). `required`:
    the flags of fields without a default must be given (a command without a config file that
    could supply them)."""
    def decorate(command: F) -> F:
        for f in reversed(dataclasses.fields(cls)):
            if f.name not in skip:
                decls, kwargs = option_spec(f, field_types(cls)[f.name],
                                            required=required and not _has_default(f))
                command = click.option(*decls, **{**kwargs, **replace.get(f.name, {})})(command)
        return command
    return decorate


def option_spec(field: dataclasses.Field, hint: Any, *,
                required: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The declarations and click arguments of the flag of `field`."""
    flag = "--" + field.metadata.get("flag", field.name.replace("_", "-"))
    kwargs: dict[str, Any] = {"default": None, "help": flag_help(field), "required": required}
    if "metavar" in field.metadata:
        kwargs["metavar"] = field.metadata["metavar"]
    hint = _without_none(hint)
    origin = get_origin(hint)
    if hint is bool:
        return [f"{flag}/--no-{flag[2:]}", field.name], kwargs
    if origin is dict:
        as_json = get_args(hint)[1:] != (str,)
        kwargs.update(multiple=True, metavar="KEY=VALUE",
                      callback=lambda ctx, param, pairs: parse_key_values(
                          pairs, option=flag, as_json=as_json) if pairs else None)
    elif origin is list and _click_type(field, get_args(hint)[0]) is not None:
        kwargs.update(multiple=True, type=_click_type(field, get_args(hint)[0]),
                      callback=lambda ctx, param, values: list(values) if values else None)
    elif _click_type(field, hint) is not None:
        kwargs["type"] = _click_type(field, hint)
    else:       # any other type: JSON, checked against the annotation when the config loads
        kwargs.update(metavar="JSON", callback=lambda ctx, param, text: None if text is None
                      else parse_value(text, option=flag))
    return [flag, field.name], kwargs


def _click_type(field: dataclasses.Field, hint: Any) -> click.ParamType | None:
    """The click type of a scalar setting (with its range); None for any other type."""
    low, high, above, below = (field.metadata.get(k)
                               for k in ("minimum", "maximum", "above", "below"))
    if get_origin(hint) is Literal and all(isinstance(a, str) for a in get_args(hint)):
        return click.Choice(get_args(hint))
    if field.metadata.get("existing_file"):
        return click.Path(exists=True, dir_okay=False)
    if field.metadata.get("existing_path"):
        return click.Path(path_type=Path, exists=True)
    if hint in (int, float):
        kind = click.IntRange if hint is int else click.FloatRange
        if low is None and high is None and above is None and below is None:
            return click.INT if hint is int else click.FLOAT
        return kind(min=above if above is not None else low,
                    max=below if below is not None else high,
                    min_open=above is not None, max_open=below is not None)
    if hint is Path:
        return click.Path(path_type=Path)
    if hint is str or str in _arms(hint):      # a value that may be text: taken as is
        return click.STRING
    return None


def _has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING \
        or field.default_factory is not dataclasses.MISSING


def _arms(hint: Any) -> tuple[Any, ...]:
    """The types of a union (`str | Path` -> (str, Path)); () for any other hint."""
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else ()


def _without_none(hint: Any) -> Any:
    arms = [a for a in _arms(hint) if a is not type(None)]
    return arms[0] if len(arms) == 1 else hint


def flag_help(field: dataclasses.Field, *, extra: str = "") -> str:
    """The field's help text (+ `extra`) and its default."""
    text = field.metadata.get("help", "") + extra
    default = field.default
    if default is dataclasses.MISSING or default is None or default == "":
        return text
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"{text} [default: {shown}]"


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
