"""Click options generated from a config dataclass: one flag per setting, whose name, type,
range and help come from the field (`madcache.core.config.setting`), so a new field is a new
typed flag. Unset flags are None and supply nothing (a TOML file's value, or the field's default,
stands). Every command's flags come from here (tests/test_cli_vocabulary.py walks them); the few
hand-written ones are listed in `HAND_WRITTEN`.

A field that names a registry entry (`setting(names="dataset")`) gets a `NameChoice`: the
registry's names, read when the command parses or shows its help (so `madcache --help` imports
no registry and a plugin's entry point is a valid name), listed in `--help`."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click

from madcache.core.config import config_from_dict, field_types, parse_key_values, parse_value

F = TypeVar("F", bound=Callable[..., Any])
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
C = TypeVar("C")

# The flags not generated from a config field: they choose where settings come from (--config),
# how a result is printed (--json), or belong to the top-level group.
HAND_WRITTEN = frozenset({"--config", "--json", "--debug", "--version", "--help"})


def config_options(
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    replace: Mapping[str, Mapping[str, Any]] = {},
    required: bool = False,
) -> Callable[[F], F]:
    """Decorate a click command with a flag for each field of `cls` (less `skip`), in field
    order. `replace` updates the click arguments of a flag (`extra_help`: a sentence added to
    the field's help, for what this command accepts beyond the config). `required`:
    the flags of fields without a default must be given (a command without a config file that
    could supply them). A field's `deprecated` spellings become hidden flags whose value goes
    to the field (with a warning)."""

    def decorate(command: F) -> F:
        aliases: dict[str, tuple[str, str, str]] = {}
        options: list[tuple[list[str], dict[str, Any]]] = []
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            decls, kwargs = option_spec(
                f, field_types(cls)[f.name], required=required and not _has_default(f)
            )
            kwargs.update(replace.get(f.name, {}), field=f)
            options.append((decls, kwargs))
            for i, old in enumerate(f.metadata.get("deprecated", ())):
                dest = f"{f.name}__deprecated{i}"
                boolean = "/" in decls[0]
                aliases[dest] = (f.name, f"--{old}", decls[0].split("/")[0])
                options.append(
                    (
                        [f"--{old}/--no-{old}" if boolean else f"--{old}", dest],
                        {**kwargs, "hidden": True, "required": False, "alias_of": f.name},
                    )
                )
        if aliases:
            command = _merging_aliases(command, aliases)
        for decls, kwargs in reversed(options):
            command = click.option(*decls, cls=SettingOption, **kwargs)(command)
        return command

    return decorate


def _merging_aliases(command: F, aliases: Mapping[str, tuple[str, str, str]]) -> F:
    """`command` taking each deprecated spelling's value as its field's (the new spelling's
    value wins; repeatable KEY=VALUE tables are merged)."""

    @functools.wraps(command)
    def wrapper(**flags: Any) -> Any:
        for dest, (name, old, new) in aliases.items():
            value = flags.pop(dest, None)
            if value is None:
                continue
            click.secho(f"warning: {old} is deprecated; use {new}", fg="yellow", err=True)
            given = flags.get(name)
            if isinstance(value, dict):
                flags[name] = {**value, **(given or {})}
            elif given is None:
                flags[name] = value
        return command(**flags)

    return wrapper  # type: ignore[return-value]


def build_config(cls: type[C], flags: Mapping[str, Any], *, noun: str = "option") -> C:
    """`cls` from the flags given (None: not given, the field's default stands), checked."""
    names = {f.name for f in dataclasses.fields(cls)}
    return config_from_dict(
        cls, {k: v for k, v in flags.items() if v is not None and k in names}, noun=noun
    )


class SettingOption(click.Option):
    """A flag generated from the config field `field` (`alias_of`: a deprecated spelling of
    that field's flag). The help of a registry-backed flag lists the names when shown."""

    def __init__(
        self,
        decls: list[str],
        *,
        field: dataclasses.Field,
        alias_of: str | None = None,
        extra_help: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(decls, **{**kwargs, "help": flag_help(field, extra=extra_help)})
        self.field, self.alias_of, self.extra_help = field, alias_of, extra_help

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if isinstance(self.type, NameChoice):
            self.help = flag_help(self.field, extra=f"{self.extra_help} {self.type.listing()}")
        return super().get_help_record(ctx)


def option_spec(
    field: dataclasses.Field, hint: Any, *, required: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """The declarations and click arguments of the flag of `field`."""
    flag = "--" + field.metadata.get("flag", field.name.replace("_", "-"))
    short = [f"-{field.metadata['short']}"] if "short" in field.metadata else []
    kwargs: dict[str, Any] = {"default": None, "help": flag_help(field), "required": required}
    if "metavar" in field.metadata:
        kwargs["metavar"] = field.metadata["metavar"]
    hint = _without_none(hint)
    origin = get_origin(hint)
    item = _repeated_item(hint)
    if hint is bool:
        return [f"{flag}/--no-{flag[2:]}", *short, field.name], kwargs
    if origin is dict:
        as_json = get_args(hint)[1:] != (str,)
        kwargs.update(
            multiple=True,
            metavar=kwargs.get("metavar", "KEY=VALUE"),
            callback=lambda ctx, param, pairs: (
                parse_key_values(pairs, option=flag, as_json=as_json) if pairs else None
            ),
        )
    elif item is not None and _click_type(field, item) is not None:
        kwargs.update(
            multiple=True,
            type=_click_type(field, item),
            callback=lambda ctx, param, values: list(values) if values else None,
        )
    elif _click_type(field, hint) is not None:
        kwargs["type"] = _click_type(field, hint)
    else:  # any other type: JSON, checked against the annotation when the config loads
        kwargs.update(
            metavar="JSON",
            callback=lambda ctx, param, text: (
                None if text is None else parse_value(text, option=flag)
            ),
        )
    return [flag, *short, field.name], kwargs


def _repeated_item(hint: Any) -> Any:
    """The item type of `list[X]` or `tuple[X, ...]` (a repeatable flag); None otherwise."""
    args = get_args(hint)
    if get_origin(hint) is list and args:
        return args[0]
    if get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _click_type(field: dataclasses.Field, hint: Any) -> click.ParamType | None:
    """The click type of a scalar setting (with its range); None for any other type."""
    low, high, above, below = (
        field.metadata.get(k) for k in ("minimum", "maximum", "above", "below")
    )
    if "names" in field.metadata:
        return NameChoice(field.metadata["names"])
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
        return kind(
            min=above if above is not None else low,
            max=below if below is not None else high,
            min_open=above is not None,
            max_open=below is not None,
        )
    if hint is Path:
        return click.Path(path_type=Path)
    if hint is str or str in _arms(hint):  # a value that may be text: taken as is
        return click.STRING
    return None


def _has_default(field: dataclasses.Field) -> bool:
    return (
        field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    )


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
    if default is dataclasses.MISSING or default is None or default in ("", ()):
        return text
    shown = str(default).lower() if isinstance(default, bool) else default
    if isinstance(default, Path) and default.is_relative_to(PACKAGE_ROOT):
        shown = default.relative_to(PACKAGE_ROOT)  # a file shipped with madcache
    return f"{text} [default: {shown}]"


# kind of entry -> "module:function" returning the names a flag of that kind accepts
NAMES = {
    "dataset": "madcache.data:DATASETS",
    "teacher": "madcache.teachers:TEACHERS",
    "student": "madcache.students:STUDENTS",
    "method": "madcache.commands.options:method_names",
    "tracker": "madcache.train.tracking:TRACKERS",
    "protocol": "madcache.extraction.protocols:PROTOCOLS",
    "region extractor": "madcache.commands.options:region_extractor_names",
}


def registry_names(kind: str) -> list[str]:
    """The names a flag naming a `kind` accepts (its registry's, plugins included)."""
    module, attr = NAMES[kind].split(":")
    source = getattr(importlib.import_module(module), attr)
    return list(source() if callable(source) else source.names())


def method_names() -> list[str]:
    """Training methods, then the adapter baselines (`train --method adapter-*`)."""
    from madcache.evaluation.adapters import ADAPTERS
    from madcache.method.methods import METHODS

    return [*METHODS.names(), *ADAPTERS.names()]


def region_extractor_names() -> list[str]:
    """Region extractors and released region formats (a plugin's format included)."""
    from madcache.students.region_extractors import REGION_EXTRACTORS
    from madcache.students.region_formats import REGION_FORMATS

    return sorted({*REGION_EXTRACTORS.names(), *REGION_FORMATS.names()})


class NameChoice(click.Choice):
    """A `click.Choice` over the names of a registry (`kind`, a key of `NAMES`), read when a
    command parses its arguments or shows its help rather than when it is imported: a dataset
    registered after import is a valid choice, and `madcache --help` imports no registry. A
    name ending in `:<...>` is a pattern (`vit:<dir>` accepts `vit:/models/vit`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(registry_names(self.kind))

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "NAME"

    def listing(self) -> str:
        """`One of: a, b, c.`: what `--help` says after the flag's own help."""
        return f"One of: {', '.join(self.choices)}."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if (
            isinstance(value, str)
            and ":" in value
            and any(
                name.endswith(">") and name.startswith(value.split(":", 1)[0] + ":<")
                for name in self.choices
            )
            and value.split(":", 1)[1]
        ):
            return value
        return super().convert(value, param, ctx)
