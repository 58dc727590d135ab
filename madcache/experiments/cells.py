"""A report's numbers: cells over seeds, their order in the tables, and each method's pairing
with the baseline.

A cell is one (dataset, row, setting, metric), a row (student, method, teachers), a setting an
(evaluated split, shots) column: the mean over the seeds of its complete runs, with the *sample*
standard deviation (ddof = 1; none for a single run) and the number of runs n. Methods of a
sweep share seeds and low-shot splits, so each method's cell is paired seed by seed with the
baseline's cell of the same setting (`madcache.experiments.stats`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from madcache.core.errors import UnknownNameError
from madcache.evaluation.adapters import ADAPTERS
from madcache.experiments.runs import FULL, Row, RunRecord
from madcache.experiments.stats import (
    Interval,
    PairedDifference,
    paired_difference,
    sample_std,
    t_interval,
)
from madcache.method.methods import METHOD_ORDER

METRIC_ORDER = ("q2a", "qa2r", "q2ar", "accuracy", "vqa_accuracy")
BASELINE = "baseline"  # the method every other one is paired with, unless told otherwise


class Setting(NamedTuple):
    """A column of the report's tables."""

    split: str
    shots: str


class CellKey(NamedTuple):
    dataset: str
    student: str
    method: str
    teachers: str
    split: str
    shots: str
    metric: str

    @classmethod
    def of(cls, dataset: str, row: Row, setting: Setting, metric: str) -> CellKey:
        return cls(dataset, *row, *setting, metric)

    @property
    def row(self) -> Row:
        return Row(self.student, self.method, self.teachers)

    @property
    def setting(self) -> Setting:
        return Setting(self.split, self.shots)


class CwKey(NamedTuple):
    """A cell of the CW table: how often confidence weighting fired in a stage."""

    dataset: str
    student: str
    method: str
    teachers: str
    stage: str
    shots: str

    @property
    def row(self) -> Row:
        return Row(self.student, self.method, self.teachers)


@dataclass
class Cell:
    values: list[float]
    runs: list[str]
    seeds: list[int | None] = field(default_factory=list)  # of each value, when known

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None for a single run."""
        return sample_std(self.values)

    @property
    def interval(self) -> Interval | None:
        """The 95% t interval of the mean; None for a single run."""
        return t_interval(self.values)

    def by_seed(self) -> tuple[dict[int, float], int]:
        """{seed: value} for pairing, and how many runs it leaves out: those without a seed and
        those whose seed occurs twice in the cell (which run to pair would be a guess)."""
        counts: dict[int | None, int] = {}
        for seed in self.seeds:
            counts[seed] = counts.get(seed, 0) + 1
        found = {s: v for s, v in zip(self.seeds, self.values) if s is not None and counts[s] == 1}
        return found, self.n - len(found)

    def text(self) -> str:
        std = self.std
        return (
            f"{self.mean:.2f} ± {std:.2f} (n={self.n})"
            if std is not None
            else f"{self.mean:.2f} (n={self.n})"
        )


# ----------------------------------------------------------------------------- aggregation


def aggregate(records: Iterable[RunRecord]) -> dict[CellKey, Cell]:
    """Cells over seeds from the complete runs: (dataset, row, split, shots, metric) -> Cell."""
    cells: dict[CellKey, Cell] = {}
    for record in records:
        if not record.complete:
            continue
        for split, result in record.eval.items():
            for metric, value in (result or {}).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                key = CellKey(record.dataset, *record.row, split, record.shots, metric)
                cell = cells.setdefault(key, Cell([], []))
                cell.values.append(float(value))
                cell.runs.append(record.path)
                cell.seeds.append(record.seed if isinstance(record.seed, int) else None)
    return cells


def cw_cells(records: Iterable[RunRecord]) -> dict[CwKey, Cell]:
    """CW firing rates (percent of a stage's training instances) over seeds, from the complete
    runs: (dataset, student, method, teachers, stage, shots) -> Cell."""
    cells: dict[CwKey, Cell] = {}
    for record in records:
        if not record.complete:
            continue
        for stage, fraction in record.cw_fired.items():
            key = CwKey(record.dataset, *record.row, stage, record.shots)
            cell = cells.setdefault(key, Cell([], []))
            cell.values.append(100.0 * float(fraction))
            cell.runs.append(record.path)
    return cells


TRANSFER_MEASURES = (
    ("image", "centred_cosine", "V: centred cos"),
    ("image", "r2", "V: R²"),
    ("image", "mean_only_r2", "V: mean-only R²"),
    ("text", "centred_cosine", "T: centred cos"),
    ("text", "r2", "T: R²"),
    ("text", "mean_only_r2", "T: mean-only R²"),
    ("distilled_zero_shot", None, "distilled zero-shot"),
)


def transfer_cells(records: Iterable[RunRecord]) -> dict[CwKey, Cell]:
    """The transfer diagnostics (train/transfer.py) over seeds, from the complete runs:
    (dataset, student, method, teachers, measure, shots) -> Cell (the `stage` field of the
    key names the measure)."""
    cells: dict[CwKey, Cell] = {}
    for record in (r for r in records if r.complete and r.transfer):
        for part, name, label in TRANSFER_MEASURES:
            value = record.transfer.get(part)
            value = value.get(name) if isinstance(value, dict) else value
            if not isinstance(value, (int, float)):
                continue
            cell = cells.setdefault(
                CwKey(record.dataset, *record.row, label, record.shots), Cell([], [])
            )
            cell.values.append(float(value))
            cell.runs.append(record.path)
    return cells


# ----------------------------------------------------------------------------- order


def shots_order(label: str) -> tuple[int, int]:
    """k ascending, full last."""
    return (1, 0) if label == FULL else (0, int(label[1:]))


def method_order(method: str) -> tuple[int, str]:
    """The registered methods in their registry's order, then unknown ones by name, then the
    adapters in their registry's report order."""
    if method in METHOD_ORDER:
        return (0, f"{METHOD_ORDER.index(method):02d}")
    if method in ADAPTERS:
        return (2, f"{ADAPTERS.get(method).report_order:02d}")
    return (1, method)


def row_order(row: Row) -> tuple[str, tuple[int, str], str]:
    return (row.student, method_order(row.method), row.teachers)


def metric_order(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)


def settings(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> list[Setting]:
    """The (split, shots) columns of one table: splits in name order (`val` before `val_sm`),
    shots ascending, full last."""
    found = {k.setting for k in cells if k.dataset == dataset and k.metric == metric}
    return sorted(found, key=lambda s: (s.split, shots_order(s.shots)))


def rows(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> list[Row]:
    found = {k.row for k in cells if k.dataset == dataset and k.metric == metric}
    return sorted(found, key=row_order)


def tables(cells: Mapping[CellKey, Cell]) -> list[tuple[str, str]]:
    """(dataset, metric) of every table, in a stable order."""
    found = {(k.dataset, k.metric) for k in cells}
    return sorted(found, key=lambda t: (t[0], metric_order(t[1])))


def ordered_keys(cells: Mapping[CellKey, Cell]) -> list[CellKey]:
    """Every cell's key in report order: tables, then rows, then settings."""
    keys = (
        CellKey.of(dataset, row, setting, metric)
        for dataset, metric in tables(cells)
        for row in rows(cells, dataset, metric)
        for setting in settings(cells, dataset, metric)
    )
    return [key for key in keys if key in cells]


# ----------------------------------------------------------------------------- pairing


@dataclass
class Pairing:
    """A method's cell paired seed by seed with the baseline's cell of the same setting."""

    baseline: str
    baseline_teachers: str
    difference: PairedDifference


def check_baseline(cells: Mapping[CellKey, Cell], baseline: str) -> None:
    """A baseline the user named must have complete runs (the default one may be absent)."""
    methods = sorted({k.method for k in cells}, key=method_order)
    if baseline not in methods:
        raise UnknownNameError(
            f"--baseline {baseline!r}: no complete runs of that method; "
            f"methods found: {', '.join(methods) or 'none'}"
        )


def paired_cells(cells: Mapping[CellKey, Cell], baseline: str = BASELINE) -> dict[CellKey, Pairing]:
    """Every other method's cell paired with the `baseline` cell of the same dataset, student,
    split, shots and metric: the baseline row with the same teachers if there is one, else the
    only baseline row (a baseline trains without a teacher cache, so its teachers are "-"). Seeds
    are the pairing key; runs of a seed the other side lacks are counted, not paired."""
    baselines: dict[CellKey, dict[str, Cell]] = {}
    for key, cell in cells.items():
        if key.method == baseline:
            baselines.setdefault(_counterpart(key), {})[key.teachers] = cell
    pairs = {}
    for key, cell in cells.items():
        candidates = baselines.get(_counterpart(key), {})
        teachers = _baseline_teachers(key.teachers, candidates)
        if key.method == baseline or teachers is None:
            continue
        method_values, method_left = cell.by_seed()
        baseline_values, baseline_left = candidates[teachers].by_seed()
        pairs[key] = Pairing(
            baseline,
            teachers,
            paired_difference(
                method_values,
                baseline_values,
                unpaired_method=method_left,
                unpaired_baseline=baseline_left,
            ),
        )
    return pairs


def _counterpart(key: CellKey) -> CellKey:
    """What a cell shares with the baseline cells it may pair with: all but method and
    teachers."""
    return key._replace(method="", teachers="")


def _baseline_teachers(teachers: str, candidates: Mapping[str, Cell]) -> str | None:
    """The baseline row (by its teachers) a row with `teachers` pairs with, if any."""
    if teachers in candidates:
        return teachers
    return next(iter(candidates)) if len(candidates) == 1 else None
