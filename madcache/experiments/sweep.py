"""Sweeps: many independent runs over one read-only cache (docs/evaluation.md, "Sweeps").

A pipeline TOML file fills a typed `SweepConfig` (unknown keys raise `ConfigError` naming the key
and the file; the file never runs code). `plan` expands the grid methods x shots x seeds x
students (x teacher caches) into `RunSpec`s, each with a run directory derived from its cell:

    <out>/<dataset>/<student>/<method>[/<teachers>]/k<K>|full/seed<S>

`run_sweep` skips every run whose metrics.json says "complete" and holds every evaluated split,
creates the low-shot split files once per (k, seed) under `<out>/splits/` (every method trains on
the same examples), and runs the rest as independent processes, `jobs` at a time. A killed run
leaves no "complete" metrics.json, so rerunning the sweep finishes only what is missing (a
half-trained run resumes from its checkpoint; a trained run that missed an evaluation only
evaluates). Run `python -m madcache.experiments.sweep JOB.json` to execute one job file by hand.

GPUs (`gpus=["0", "1"]`, `jobs_per_gpu=K`): each GPU is K slots; a job takes a free slot, runs
with `CUDA_VISIBLE_DEVICES` set to that GPU (and device "cuda"), and gives the slot back, so
four GPUs run four seeds at once instead of stacking them on GPU 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from madcache.cache.location import is_url
from madcache.core.config import (check_value, check_values, parse_key_values, parse_value,
                                  read_toml)
from madcache.core.errors import ConfigError, ConfigValueError, MadcacheError
from madcache.core.io import check_output_location
from madcache.data import DATASETS
from madcache.evaluation.adapters import ADAPTER_STUDENT, ADAPTERS, is_adapter

SM_SUFFIX = "_sm"
SPLITS_DIR = "splits"
ZERO_SHOT_DIR = "zero-shot"
JOB_FILE = "sweep-job.json"
LOG_FILE = "sweep.log"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TeacherCaches:
    """One teacher set: the cache of the training split, and caches of evaluated splits (for
    zero-shot and adapters), by eval name (`val`, `val_sm`)."""

    name: str
    cache: str
    eval_caches: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StudentSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def dirname(self) -> str:
        return self.label or self.name


@dataclass
class SweepConfig:
    """A pipeline file, resolved: placeholders substituted, paths absolute."""

    dataset: str
    root: str
    out: str
    methods: list[str]
    seeds: list[int]
    shots: list[int | None] = field(default_factory=lambda: [None])     # None = full data
    teachers: list[TeacherCaches] = field(default_factory=list)
    students: list[StudentSpec] = field(default_factory=lambda: [StudentSpec("single-stream")])
    regions: str | None = None
    eval: list[str] = field(default_factory=lambda: ["val"])
    zero_shot: bool = False
    train_split: str = "train"
    read_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)   # executors.SlurmSettings
    source: str | None = None

    def __post_init__(self) -> None:
        validate(self)


# Top-level keys of a pipeline file; `cache` / `eval_caches` are shorthand for one `[[teachers]]`.
FILE_KEYS = {"dataset", "root", "out", "methods", "seeds", "shots", "teachers", "cache",
             "eval_caches", "students", "regions", "eval", "zero_shot", "train_split",
             "read_options", "train", "adapter", "slurm", "vars"}
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
    settings = {k: parse_value(v, option=f"--set {k}") for k, v in pairs.items()
                if k not in variables}
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

    def one(match: re.Match) -> str:
        found = lookup(match.group(1))
        if found is None:
            name = match.group(1)
            raise ConfigError(f"{path}: ${{{name}}} is not set: pass --set {name}=VALUE "
                              f"(or set the environment variable {name})")
        return found
    return PLACEHOLDER.sub(one, value)


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
    students = [_student(s, i, where) for i, s in enumerate(
        check_value(list[str | dict[str, Any]], data.get("students", ["single-stream"]),
                    key="students", where=f"{where}: "))]
    values = {k: v for k, v in data.items() if k not in {"teachers", "cache", "eval_caches",
                                                         "students"}}
    shots = check_value(list[int | Literal["full"]], data.get("shots", ["full"]), key="shots",
                        where=f"{where}: ")
    values = check_values(SweepConfig, {**values, "shots": [_shot(s, where) for s in shots]},
                          where=f"{where}: ")
    for key in ("root", "out", "regions"):
        if values.get(key) is not None:
            values[key] = resolve(values[key], base)
    return SweepConfig(**values, teachers=teachers, students=students, source=where)


def resolve(value: str, base: Path) -> str:
    """A path of the pipeline file, relative to its folder; an object-store URL as is."""
    if is_url(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _no_unknown(data: Mapping[str, Any], known: set[str], where: str, table: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{table}{unknown[0]}'; valid keys"
                          f"{' in [' + table.rstrip('.') + ']' if table else ''}: "
                          f"{', '.join(sorted(known))}")


def _teachers(data: Mapping[str, Any], base: Path, where: str) -> list[TeacherCaches]:
    if "teachers" in data and ("cache" in data or "eval_caches" in data):
        raise ConfigError(f"{where}: give either 'cache' (+ 'eval_caches') or [[teachers]]")
    entries = data.get("teachers")
    table = "teachers"
    if entries is None:
        if "cache" not in data:
            return []
        entries = [{"name": "teacher", "cache": data["cache"],
                    "eval_caches": data.get("eval_caches", {})}]
        table = ""                      # the shorthand: errors name 'cache' / 'eval_caches'
    entries = check_value(list[str | dict[str, Any]], entries, key="teachers",
                          where=f"{where}: ")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"cache": entry}
        _no_unknown(entry, TEACHER_KEYS, where, "teachers.")
        if "cache" not in entry:
            raise ConfigError(f"{where}: teachers[{i}] needs 'cache'")
        entry = check_values(TeacherCaches, entry, where=f"{where}: ",
                             table=f"{table}[{i}]" if table else "")
        evals = {k: resolve(v, base) for k, v in entry.get("eval_caches", {}).items()}
        name = entry.get("name") or Path(entry["cache"]).name
        out.append(TeacherCaches(name, resolve(entry["cache"], base), evals))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: teacher names must be unique, got {names}")
    return out


def _student(entry: str | dict[str, Any], i: int, where: str) -> StudentSpec:
    if isinstance(entry, str):
        return StudentSpec(entry)
    if "name" not in entry:
        raise ConfigError(f"{where}: a student is a name or a table with 'name'")
    _no_unknown(entry, STUDENT_KEYS, where, "students.")
    return StudentSpec(**check_values(StudentSpec, entry, where=f"{where}: ",
                                      table=f"students[{i}]"))


def _shot(value: int | str, where: str) -> int | None:
    if value == "full":
        return None
    if value < 1:
        raise ConfigError(f"{where}: shots are per-category k >= 1 or \"full\", got {value!r}")
    return value


def validate(config: SweepConfig) -> None:
    """Check names and combinations; every error names the file and the key."""
    where = config.source or "sweep config"
    from madcache.method.methods import METHODS

    for method in config.methods:
        if method not in METHODS and method not in ADAPTERS:
            valid = ", ".join(sorted([*METHODS.names(), *ADAPTERS]))
            raise ConfigError(f"{where}: unknown method '{method}' in 'methods'. Available: {valid}")
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
    needs_cache = [m for m in config.methods if is_adapter(m) or METHODS.get(m).distils]
    if needs_cache and not config.teachers:
        raise ConfigError(f"{where}: methods {', '.join(needs_cache)} need a teacher cache "
                          "('cache' or [[teachers]])")
    adapters = [m for m in config.methods if is_adapter(m)]
    for teacher in config.teachers:
        if (adapters or config.zero_shot) and not (set(config.eval) & set(teacher.eval_caches)):
            raise ConfigError(f"{where}: {'adapters' if adapters else 'zero_shot'} need(s) a "
                              f"cache of an evaluated split: 'eval_caches' of teacher "
                              f"'{teacher.name}' has none of {config.eval}")


def _check_tables(config: SweepConfig, where: str) -> None:
    """`[train]` / `[adapter]`: no key the sweep sets per run, every value type-checked."""
    from madcache.evaluation.adapters import AdapterConfig
    from madcache.train.config import TrainConfig

    for table, cls in (("train", TrainConfig), ("adapter", AdapterConfig)):
        values = getattr(config, table)
        owned = set(run_settings(config, _probe(config, table)))
        for key in values:
            if key in owned:
                raise ConfigError(f"{where}: '{table}.{key}' is set by the sweep for each run; "
                                  "use the top-level keys instead")
        _no_unknown(values, {f.name for f in dataclasses.fields(cls)} - owned, where,
                    f"{table}.")
        setattr(config, table, check_values(cls, values, where=f"{where}: ", table=table))
    _check_run_configs(config, where)


def _check_run_configs(config: SweepConfig, where: str) -> None:
    """Build each method's training config now, so that a `[train]` value that does not suit a
    method (`m = 0` for a method that selects words, `af_epochs = 0` for one with an AF stage)
    is refused when the pipeline loads, not inside each of its runs."""
    from madcache.train.config import TrainConfig

    teacher = config.teachers[0] if config.teachers else None
    for method in (m for m in config.methods if m not in ADAPTERS):
        spec = RunSpec(config.dataset, method, config.students[0], teacher, None, 0,
                       Path(config.out), (), "")
        try:
            TrainConfig.from_dict({**config.train, **run_settings(config, spec)})
        except ConfigError as exc:
            raise ConfigError(f"{where}: [train] for method {method}: {exc}") from None


def _probe(config: SweepConfig, kind: str) -> RunSpec:
    """A stand-in run of `kind` ("train" or "adapter"), to ask `run_settings` which keys the
    sweep sets for such runs."""
    teacher = config.teachers[0] if config.teachers else TeacherCaches("probe", "")
    method = ADAPTERS[0] if kind == "adapter" else "baseline"
    return RunSpec(config.dataset, method, config.students[0], teacher, None, 0,
                   Path(config.out), (), "")


# ----------------------------------------------------------------------------- the grid

@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    dataset: str
    method: str
    student: StudentSpec | None          # None for adapters (frozen teacher features)
    teacher: TeacherCaches | None        # None for a method that needs no teacher
    shots: int | None                    # None = full data
    seed: int
    run_dir: Path
    evals: tuple[str, ...]
    name: str                            # run_dir below the runs root (what --only matches)

    @property
    def kind(self) -> str:
        return "adapter" if is_adapter(self.method) else "train"

    @property
    def split_key(self) -> tuple[int, int] | None:
        return None if self.shots is None else (self.shots, self.seed)


def shots_dir(shots: int | None) -> str:
    return "full" if shots is None else f"k{shots}"


def run_name(dataset: str, *, student: str, method: str, teacher: str | None,
             shots: int | None, seed: int) -> str:
    """`<dataset>/<student>/<method>[/<teachers>]/k<K>|full/seed<S>`."""
    parts = [dataset, student, method] + ([teacher] if teacher else [])
    return "/".join([*parts, shots_dir(shots), f"seed{seed}"])


def plan(config: SweepConfig) -> list[RunSpec]:
    """Every run of the grid, in a fixed order (students, methods, teachers, shots, seeds).
    Adapters ignore the students; a method without distillation (baseline) runs once per
    cell, without a teacher cache."""
    from madcache.method.methods import METHODS

    specs: list[RunSpec] = []
    many = len(config.teachers) > 1
    for student in config.students:
        for method in config.methods:
            adapter = is_adapter(method)
            if adapter and student != config.students[0]:
                continue
            uses_teacher = adapter or METHODS.get(method).distils
            teachers: list[TeacherCaches | None] = list(config.teachers) if uses_teacher else [None]
            for teacher in teachers:
                evals = tuple(e for e in config.eval if not adapter or e in teacher.eval_caches)
                for shots in config.shots:
                    for seed in config.seeds:
                        name = run_name(config.dataset, method=method, shots=shots, seed=seed,
                                        student=ADAPTER_STUDENT if adapter else student.dirname,
                                        teacher=teacher.name if many and uses_teacher else None)
                        specs.append(RunSpec(config.dataset, method, None if adapter else student,
                                             teacher, shots, seed, Path(config.out) / name,
                                             evals, name))
    return specs


def select(specs: Iterable[RunSpec], only: str | None) -> list[RunSpec]:
    if not only:
        return list(specs)
    try:
        pattern = re.compile(only)
    except re.error as exc:
        raise ConfigError(f"--only {only!r} is not a regular expression ({exc})") from None
    return [s for s in specs if pattern.search(s.name)]


def split_path(config: SweepConfig, shots: int, seed: int) -> Path:
    return Path(config.out) / SPLITS_DIR / f"{config.dataset}-k{shots}-seed{seed}.json"


# ----------------------------------------------------------------------------- run state

def read_metrics(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def run_state(spec: RunSpec) -> str:
    """"complete" (trained and every eval present), "evaluate" (trained, an eval missing) or
    "todo"."""
    metrics = read_metrics(spec.run_dir)
    if not metrics or metrics.get("status") != "complete":
        return "todo"
    done = set(metrics.get("eval") or {})
    return "complete" if set(spec.evals) <= done else "evaluate"


# ----------------------------------------------------------------------------- jobs

def job_payload(config: SweepConfig, spec: RunSpec) -> dict[str, Any]:
    """What the worker process needs: the run's resolved config and the evals to have."""
    table = config.adapter if spec.kind == "adapter" else config.train
    return {"kind": spec.kind, "config": {**table, **run_settings(config, spec)},
            "evals": list(spec.evals)}


def run_settings(config: SweepConfig, spec: RunSpec) -> dict[str, Any]:
    """The settings the sweep sets for one run (so `[train]` / `[adapter]` may not set them)."""
    split = None if spec.shots is None else str(split_path(config, spec.shots, spec.seed))
    if spec.kind == "adapter":
        return {"dataset": config.dataset, "cache": spec.teacher.cache,
                "out": str(spec.run_dir), "method": spec.method, "root": config.root,
                "eval_caches": {e: spec.teacher.eval_caches[e] for e in spec.evals},
                "split_file": split, "per_category": spec.shots, "seed": spec.seed,
                "read_options": config.read_options}
    plain = [e for e in spec.evals if not e.endswith(SM_SUFFIX)]
    return {"dataset": config.dataset, "root": config.root, "out": str(spec.run_dir),
            "method": spec.method, "cache": spec.teacher.cache if spec.teacher else None,
            "regions": config.regions, "split": config.train_split,
            "eval_split": plain[0] if plain else None, "read_options": config.read_options,
            "student": spec.student.name, "student_options": spec.student.options,
            "seed": spec.seed, "per_category": spec.shots, "split_file": split, "resume": True}


def execute(payload: Mapping[str, Any]) -> None:
    """Run one job in this process: train (or resume) unless complete, then the missing evals."""
    directory = Path(payload["config"]["out"])
    metrics = read_metrics(directory)
    complete = bool(metrics) and metrics.get("status") == "complete"
    if payload["kind"] == "adapter":
        if not complete or not set(payload["evals"]) <= set(metrics.get("eval") or {}):
            from madcache.evaluation.adapters import AdapterConfig, run_adapter

            run_adapter(AdapterConfig.from_dict(payload["config"]))
        return
    if not complete:
        from madcache.train.config import TrainConfig
        from madcache.train.loop import run_training

        metrics = run_training(TrainConfig.from_dict(payload["config"]))
    from madcache.evaluation.evaluate import evaluate_run

    for name in payload["evals"]:
        if name not in (metrics.get("eval") or {}):
            sm = name.endswith(SM_SUFFIX)
            evaluate_run(directory, split=name[:-len(SM_SUFFIX)] if sm else name, sm=sm)


Runner = Callable[[RunSpec, dict[str, Any]], None]


class RunFailed(RuntimeError):
    pass


def subprocess_runner(spec: RunSpec, payload: dict[str, Any]) -> None:
    """Run a job as its own process (`python -m madcache.experiments.sweep JOB.json`), output to a log."""
    job, env = _job_file(spec, payload)
    with open(spec.run_dir / LOG_FILE, "a", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "madcache.experiments.sweep", str(job)], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode
    _check_exit(spec, code)


def forked_runner(spec: RunSpec, payload: dict[str, Any]) -> None:
    """`subprocess_runner`'s contract (the job file, its log, its exit code, a fresh process per
    run) without paying the start-up of Python, torch and transformers for every run (~5-10 s on
    a busy 2-core machine): each run is forked from a forkserver that imported them once."""
    job, env = _job_file(spec, payload)
    process = _forkserver().Process(target=_run_forked,
                                    args=(str(job), str(spec.run_dir / LOG_FILE), env))
    process.start()
    process.join()
    _check_exit(spec, process.exitcode)


# Imported once by the forkserver, so every forked run starts with them loaded.
PRELOAD = ("madcache.train.loop", "madcache.evaluation.evaluate", "madcache.students",
           "madcache.students.single_stream", "transformers.models.bert.modeling_bert")


def _forkserver():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *PRELOAD])
    return context


def _run_forked(job: str, log: str, env: dict[str, str]) -> None:
    """The body of a forked run: the job's environment and log, then `main`, as the
    subprocess would (torch was imported before OMP_NUM_THREADS was set: apply it)."""
    os.environ.update(env)
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    code = main([job])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def _job_file(spec: RunSpec, payload: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """Write the run's job file; return it and the environment the run needs."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    job = spec.run_dir / JOB_FILE
    job.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    env = {"TQDM_DISABLE": "1", **payload.get("env", {})}
    if "threads" in payload and "OMP_NUM_THREADS" not in {**os.environ, **env}:
        env["OMP_NUM_THREADS"] = str(payload["threads"])   # N jobs x all cores each would thrash
    return job, env


def _check_exit(spec: RunSpec, code: int | None) -> None:
    if code != 0:
        tail = (spec.run_dir / LOG_FILE).read_text(encoding="utf-8").strip().splitlines()[-3:]
        raise RunFailed(f"exit code {code}; see {spec.run_dir / LOG_FILE}: " + " | ".join(tail))


def in_process_runner(spec: RunSpec, payload: dict[str, Any]) -> None:
    """Run a job in this process (tests, notebooks); a GPU slot's environment is not applied."""
    execute(payload)


# ----------------------------------------------------------------------------- the sweep

SplitMaker = Callable[[int, int], Any]     # (k, seed) -> madcache.data.lowshot.Split


def dataset_split_maker(config: SweepConfig) -> SplitMaker:
    """Samples splits from the training split's examples (read once, on first use)."""
    examples: list[Any] = []

    def make(k: int, seed: int):
        from madcache.data import lowshot, read_examples

        if not examples:
            examples.extend(read_examples(config.dataset, config.root, config.train_split,
                                          **config.read_options).examples)
        return lowshot.sample_per_category(examples, k=k, seed=seed)
    return make


def ensure_splits(config: SweepConfig, specs: Iterable[RunSpec], make: SplitMaker) -> list[Path]:
    """Create each (k, seed) split file the runs need, once; existing files are reused."""
    created = []
    for key in sorted({s.split_key for s in specs if s.split_key is not None}):
        path = split_path(config, *key)
        if path.is_file():
            continue
        temp = path.with_name(path.name + ".tmp")
        make(*key).save(temp)
        temp.replace(path)
        created.append(path)
    return created


@dataclass
class SweepResult:
    planned: list[RunSpec]
    skipped: list[RunSpec] = field(default_factory=list)
    ran: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    zero_shot: list[Path] = field(default_factory=list)
    states: dict[Path, str] = field(default_factory=dict)
    submitted: list[Any] = field(default_factory=list)     # jobs of a cluster executor


def zero_shot_dir(config: SweepConfig, teacher: TeacherCaches, eval_name: str) -> Path:
    return Path(config.out) / config.dataset / ZERO_SHOT_DIR / teacher.name / eval_name


def run_zero_shots(config: SweepConfig, result: SweepResult) -> None:
    """Teacher-only results of each evaluated split that has a cache (skipped when present)."""
    from madcache.evaluation.zeroshot import RESULT_JSON, run_zero_shot

    for teacher in config.teachers:
        for name in config.eval:
            if name not in teacher.eval_caches:
                continue
            out = zero_shot_dir(config, teacher, name)
            if not (out / RESULT_JSON).is_file():
                run_zero_shot(teacher.eval_caches[name], root=config.root, out=out)
            result.zero_shot.append(out / RESULT_JSON)


def gpu_slots(gpus: Sequence[str], jobs_per_gpu: int) -> list[str]:
    """One `CUDA_VISIBLE_DEVICES` value per concurrent job: every GPU `jobs_per_gpu` times, in
    round-robin order so that the first jobs go to different GPUs."""
    if jobs_per_gpu < 1:
        raise ConfigError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    names = [str(g).strip() for g in gpus]
    if not names or any(not g for g in names) or len(set(names)) != len(names):
        raise ConfigError(f"--gpus takes distinct GPU ids such as 0,1,2,3; got {','.join(names)}")
    return [gpu for _ in range(jobs_per_gpu) for gpu in names]


def on_slot(payload: dict[str, Any], gpu: str) -> dict[str, Any]:
    """`payload` for a job on GPU `gpu`: that GPU is the job's only visible one, its "cuda"."""
    return {**payload, "config": {**payload["config"], "device": "cuda"},
            "env": {**payload.get("env", {}), "CUDA_VISIBLE_DEVICES": gpu}}


def run_sweep(config: SweepConfig, *, jobs: int | None = 1, only: str | None = None,
              dry_run: bool = False, runner: Runner | None = None,
              make_split: SplitMaker | None = None, progress: bool = True,
              gpus: Sequence[str] | None = None, jobs_per_gpu: int = 1,
              report_to: str | None = None, executor: Any = None) -> SweepResult:
    """Run every missing run of the grid; see the module docstring. `jobs` None: one per GPU
    slot (one without GPUs); `report_to` sets each training run's tracker (--report-to). With an
    `executor` (experiments/executors.py: a Slurm job array) the pending runs are submitted,
    not run here."""
    if executor is not None and gpus:
        raise ConfigError("--gpus places runs on this machine's GPUs; with --executor slurm "
                          "each run gets the GPUs of its job (--slurm-gpus)")
    check_output_location(config.out, roots=[config.root], option="out",
                          inputs=[config.regions, *(t.cache for t in config.teachers),
                                  *(c for t in config.teachers for c in t.eval_caches.values())])
    slots = gpu_slots(gpus, jobs_per_gpu) if gpus else None
    jobs = jobs if jobs is not None else (len(slots) if slots else 1)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    for table in ("train", "adapter"):
        device = getattr(config, table).get("device")
        if slots and device is not None and device != "cuda":
            raise ConfigError(f"--gpus runs every job on its GPU slot ('cuda') but {table}.device "
                              f"is {device!r}: drop it from the pipeline or drop --gpus")
    if slots and jobs > len(slots):
        raise ConfigError(f"--jobs {jobs} is more than the {len(slots)} GPU slot(s) of --gpus "
                          f"{','.join(dict.fromkeys(slots))} x --jobs-per-gpu {jobs_per_gpu}")
    if report_to is not None:
        from madcache.train.tracking import TRACKERS

        TRACKERS.get(report_to)
    specs = select(plan(config), only)
    result = SweepResult(planned=specs, states={s.run_dir: run_state(s) for s in specs})
    pending = [s for s in specs if result.states[s.run_dir] != "complete"]
    result.skipped = [s for s in specs if result.states[s.run_dir] == "complete"]
    if dry_run:
        return result
    if config.zero_shot:
        run_zero_shots(config, result)
    ensure_splits(config, pending, make_split or dataset_split_maker(config))

    def payload_of(spec: RunSpec) -> dict[str, Any]:
        payload = job_payload(config, spec)
        if report_to is not None and spec.kind == "train":
            payload["config"]["report_to"] = report_to
        return payload

    if executor is not None:
        result.submitted = executor.submit(config, pending, payload_of)
        return result
    run = runner or (subprocess_runner if slots else forked_runner)
    from tqdm.auto import tqdm

    with tqdm(total=len(specs), initial=len(result.skipped), desc="sweep", unit="run",
              disable=not progress) as bar:
        for spec, error in _dispatch(pending, payload_of, run, jobs, slots):
            (result.failed.append((spec, error)) if error else result.ran.append(spec))
            bar.update(1)
    return result


def _dispatch(pending: list[RunSpec], payload_of: Callable[[RunSpec], dict[str, Any]],
              run: Runner, jobs: int, slots: list[str] | None
              ) -> Iterable[tuple[RunSpec, str | None]]:
    """Yield (spec, error or None) as runs finish; one at a time in this thread when jobs == 1
    (an interrupt stops the sweep at once), else `jobs` at once. With GPU slots, each job holds
    a free slot while it runs."""
    free: queue.Queue[str] | None = None
    if slots:
        free = queue.Queue()
        for slot in slots:
            free.put(slot)

    def attempt(spec: RunSpec, payload: dict[str, Any]) -> str | None:
        if free is None:
            return _attempt(run, spec, payload)
        slot = free.get()
        try:
            return _attempt(run, spec, on_slot(payload, slot))
        finally:
            free.put(slot)

    if jobs == 1:
        for spec in pending:
            yield spec, attempt(spec, payload_of(spec))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(attempt, s, {**payload_of(s), "threads": threads}): s
                   for s in pending}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _attempt(run: Runner, spec: RunSpec, payload: dict[str, Any]) -> str | None:
    try:
        run(spec, payload)
    except Exception as exc:          # one failed run does not stop the others
        return f"{type(exc).__name__}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m madcache.experiments.sweep JOB.json`: execute one job file written by the sweep.
    A `MadcacheError` (a refused resume, bad data) is one line on stderr and exit code 2, so the
    sweep's failure summary quotes it rather than the end of a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m madcache.experiments.sweep JOB.json", file=sys.stderr)
        return 2
    try:
        execute(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    except MadcacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
