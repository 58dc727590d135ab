"""Pipeline files: a TOML file (plus `--set KEY=VALUE` overrides) read into a checked
`SweepConfig` (experiments/grid.py).

Unknown keys raise `ConfigError` naming the key and the file; every value is type-checked, the
`[train]` / `[adapter]` tables against `TrainConfig` / `AdapterConfig` (and each method's run
config is built once), so a bad value fails when the pipeline loads, not inside each run. The
file never runs code. `${NAME}` placeholders are filled from `--set NAME=...`, the environment
or the file's `[vars]` table.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from madcache.cache.location import is_url
from madcache.core.config import check_value, check_values, parse_key_values, parse_value, read_toml
from madcache.core.errors import ConfigError, ConfigValueError, MadcacheError
from madcache.data import DATASETS
from madcache.evaluation.adapters import ADAPTERS, AdapterConfig
from madcache.experiments.grid import (
    SM_SUFFIX,
    RunSpec,
    SweepConfig,
    SweepStudent,
    TeacherCaches,
    run_settings,
)

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")

# Top-level keys of a pipeline file; `cache` / `eval_caches` are shorthand for one `[[teachers]]`.
FILE_KEYS = {
    "dataset",
    "root",
    "out",
    "methods",
    "seeds",
    "shots",
    "teachers",
    "cache",
    "eval_caches",
    "students",
    "regions",
    "eval",
    "zero_shot",
    "train_split",
    "read_options",
    "train",
    "adapter",
    "slurm",
    "vars",
}
TEACHER_KEYS = {"name", "cache", "eval_caches"}
STUDENT_KEYS = {"name", "options", "label"}


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a pipeline file. `overrides` are `KEY=VALUE` strings: an UPPER_CASE key sets a
    placeholder variable (`${ROOT}`), any other key a (dotted) config key, e.g. `seeds=[0,1]`
    or `train.epochs=2` (values parsed as JSON when they are JSON). A bad value names the key
    and where it came from: `FILE: train.lr: ...` or `--set train.lr: ...`."""
    path = Path(path)
    data = read_toml(path, what="pipeline file")
    variables, settings = split_overrides(overrides)
    defaults = {k: str(v) for k, v in data.pop("vars", {}).items()}
    for key, value in settings.items():
        set_dotted(data, key, value)

    def lookup(name: str) -> str | None:
        """`--set NAME=...`, else the environment, else the file's `[vars]` table."""
        return variables.get(name, os.environ.get(name, defaults.get(name)))

    data = substitute(data, lookup, path)
    try:
        return from_dict(data, base=path.parent, source=path)
    except ConfigValueError as exc:
        if any(exc.key == k or exc.key.startswith((f"{k}.", f"{k}[")) for k in settings):
            raise ConfigValueError(exc.key, exc.problem, where="--set ") from None
        raise


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """(placeholder variables, as given; settings, parsed like every `KEY=VALUE` option)."""
    pairs = parse_key_values(overrides, option="--set", as_json=False)
    variables = {k: v for k, v in pairs.items() if VARIABLE.fullmatch(k)}
    settings = {
        k: parse_value(v, option=f"--set {k}") for k, v in pairs.items() if k not in variables
    }
    return variables, settings


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a table")
    data[last] = value


def substitute(value: Any, lookup: Callable[[str], str | None], path: Path) -> Any:
    """Replace `${NAME}` in every string with `lookup(NAME)`; an unset name raises, naming it."""
    if isinstance(value, dict):
        return {k: substitute(v, lookup, path) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup, path) for v in value]
    if not isinstance(value, str):
        return value

    def placeholder_value(match: re.Match) -> str:
        found = lookup(match.group(1))
        if found is None:
            name = match.group(1)
            raise ConfigError(
                f"{path}: ${{{name}}} is not set: pass --set {name}=VALUE "
                f"(or set the environment variable {name})"
            )
        return found

    return PLACEHOLDER.sub(placeholder_value, value)


def from_dict(data: Mapping[str, Any], *, base: Path, source: Path | None = None) -> SweepConfig:
    """Build a `SweepConfig` from a parsed pipeline file; relative paths are taken from `base`.
    Every value is type-checked, the `[train]` / `[adapter]` tables against `TrainConfig` /
    `AdapterConfig`, so a bad value fails here, naming the file and the key, not in each run."""
    where = str(source) if source else "sweep config"
    _no_unknown(data, FILE_KEYS - {"vars"}, where, "")
    for key in ("dataset", "root", "out", "methods", "seeds"):
        if key not in data:
            raise ConfigError(f"{where}: missing key '{key}'")
    teachers = _teachers(data, base, where)
    students = [
        _student(s, i, where)
        for i, s in enumerate(
            check_value(
                list[str | dict[str, Any]],
                data.get("students", ["single-stream"]),
                key="students",
                where=f"{where}: ",
            )
        )
    ]
    values = {
        k: v for k, v in data.items() if k not in {"teachers", "cache", "eval_caches", "students"}
    }
    shots = check_value(
        list[int | Literal["full"]], data.get("shots", ["full"]), key="shots", where=f"{where}: "
    )
    values = check_values(
        SweepConfig, {**values, "shots": [_shot(s, where) for s in shots]}, where=f"{where}: "
    )
    for key in ("root", "out", "regions"):
        if values.get(key) is not None:
            values[key] = resolve(values[key], base)
    config = SweepConfig(**values, teachers=teachers, students=students, source=where)
    validate(config)
    return config


def resolve(value: str, base: Path) -> str:
    """A path of the pipeline file, relative to its folder; an object-store URL as is."""
    if is_url(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _no_unknown(data: Mapping[str, Any], known: set[str], where: str, table: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{table}{unknown[0]}'; valid keys"
            f"{' in [' + table.rstrip('.') + ']' if table else ''}: "
            f"{', '.join(sorted(known))}"
        )


def _teachers(data: Mapping[str, Any], base: Path, where: str) -> list[TeacherCaches]:
    if "teachers" in data and ("cache" in data or "eval_caches" in data):
        raise ConfigError(f"{where}: give either 'cache' (+ 'eval_caches') or [[teachers]]")
    entries = data.get("teachers")
    table = "teachers"
    if entries is None:
        if "cache" not in data:
            return []
        entries = [
            {"name": "teacher", "cache": data["cache"], "eval_caches": data.get("eval_caches", {})}
        ]
        table = ""  # the shorthand: errors name 'cache' / 'eval_caches'
    entries = check_value(list[str | dict[str, Any]], entries, key="teachers", where=f"{where}: ")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"cache": entry}
        _no_unknown(entry, TEACHER_KEYS, where, "teachers.")
        if "cache" not in entry:
            raise ConfigError(f"{where}: teachers[{i}] needs 'cache'")
        entry = check_values(
            TeacherCaches, entry, where=f"{where}: ", table=f"{table}[{i}]" if table else ""
        )
        evals = {k: resolve(v, base) for k, v in entry.get("eval_caches", {}).items()}
        name = entry.get("name") or Path(entry["cache"]).name
        out.append(TeacherCaches(name, resolve(entry["cache"], base), evals))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: teacher names must be unique, got {names}")
    return out


def _student(entry: str | dict[str, Any], i: int, where: str) -> SweepStudent:
    if isinstance(entry, str):
        return SweepStudent(entry)
    if "name" not in entry:
        raise ConfigError(f"{where}: a student is a name or a table with 'name'")
    _no_unknown(entry, STUDENT_KEYS, where, "students.")
    return SweepStudent(
        **check_values(SweepStudent, entry, where=f"{where}: ", table=f"students[{i}]")
    )


def _shot(value: int | str, where: str) -> int | None:
    if value == "full":
        return None
    if value < 1:
        raise ConfigError(f'{where}: shots are per-category k >= 1 or "full", got {value!r}')
    return value


def validate(config: SweepConfig) -> None:
    """Check names and combinations; every error names the file and the key."""
    where = config.source or "sweep config"
    from madcache.method.methods import METHODS

    for method in config.methods:
        if method not in METHODS and method not in ADAPTERS:
            valid = ", ".join(sorted([*METHODS.names(), *ADAPTERS]))
            raise ConfigError(
                f"{where}: unknown method '{method}' in 'methods'. Available: {valid}"
            )
    if not config.methods or not config.seeds or not config.students:
        raise ConfigError(f"{where}: 'methods', 'seeds' and 'students' must not be empty")
    if len(set(config.seeds)) != len(config.seeds) or min(config.seeds) < 0:
        raise ConfigError(f"{where}: 'seeds' must be distinct integers >= 0, got {config.seeds}")
    for name in config.eval:
        if name.endswith(SM_SUFFIX):
            try:
                DATASETS.get(config.dataset).check_sm()
            except MadcacheError as exc:
                raise ConfigError(f"{where}: eval '{name}': {exc}") from None
    _check_tables(config, where)
    needs_cache = [m for m in config.methods if m in ADAPTERS or METHODS.get(m).distils]
    if needs_cache and not config.teachers:
        raise ConfigError(
            f"{where}: methods {', '.join(needs_cache)} need a teacher cache "
            "('cache' or [[teachers]])"
        )
    adapters = [m for m in config.methods if m in ADAPTERS]
    for teacher in config.teachers:
        if (adapters or config.zero_shot) and not (set(config.eval) & set(teacher.eval_caches)):
            raise ConfigError(
                f"{where}: {'adapters' if adapters else 'zero_shot'} need(s) a "
                f"cache of an evaluated split: 'eval_caches' of teacher "
                f"'{teacher.name}' has none of {config.eval}"
            )


def _check_tables(config: SweepConfig, where: str) -> None:
    """`[train]` / `[adapter]`: no key the sweep sets per run, every value type-checked."""
    from madcache.train.config import TrainConfig

    for table, cls in (("train", TrainConfig), ("adapter", AdapterConfig)):
        values = getattr(config, table)
        owned = set(run_settings(config, _probe(config, table)))
        for key in values:
            if key in owned:
                raise ConfigError(
                    f"{where}: '{table}.{key}' is set by the sweep for each run; "
                    "use the top-level keys instead"
                )
        _no_unknown(values, {f.name for f in dataclasses.fields(cls)} - owned, where, f"{table}.")
        setattr(config, table, check_values(cls, values, where=f"{where}: ", table=table))
    _check_run_configs(config, where)


def _check_run_configs(config: SweepConfig, where: str) -> None:
    """Build each method's training config now, so that a `[train]` value that does not suit a
    method (`m = 0` for a method that selects words, `af_epochs = 0` for one with an AF stage)
    is refused when the pipeline loads, not inside each of its runs."""
    from madcache.train.config import TrainConfig

    teacher = config.teachers[0] if config.teachers else None
    for method in (m for m in config.methods if m not in ADAPTERS):
        spec = RunSpec(
            config.dataset, method, config.students[0], teacher, None, 0, Path(config.out), (), ""
        )
        try:
            TrainConfig.from_dict({**config.train, **run_settings(config, spec)})
        except ConfigError as exc:
            raise ConfigError(f"{where}: [train] for method {method}: {exc}") from None


def _probe(config: SweepConfig, kind: str) -> RunSpec:
    """A stand-in run of `kind` ("train" or "adapter"), to ask `run_settings` which keys the
    sweep sets for such runs."""
    teacher = config.teachers[0] if config.teachers else TeacherCaches("probe", "")
    method = ADAPTERS.names()[0] if kind == "adapter" else "baseline"
    return RunSpec(
        config.dataset, method, config.students[0], teacher, None, 0, Path(config.out), (), ""
    )
