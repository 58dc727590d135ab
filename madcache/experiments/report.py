"""Reports: every run under a runs folder, aggregated into the paper's table shape.

Rows are (student, method, teachers); columns are settings (evaluated split x shots, e.g.
`val k100`, `val_sm full`), one table per (dataset, metric). A cell is the mean over seeds with
the *sample* standard deviation (ddof = 1; empty for a single run) and the number of runs n.
Outputs: `report.md` (tables + zero-shot results), `report.csv` (one row per cell, long format,
with the run directories behind it), `runs.csv` (one row per run with its provenance: cache
fingerprint, split file and digest, seed, git commit, CW firing rates, config) and PNG plots (metric vs shots per
method, error bars = the std above), one per (dataset, split, metric).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from madcache.core.errors import ConfigError
from madcache.evaluation.zeroshot import teachers_label
from madcache.method.methods import METHOD_ORDER

METRIC_ORDER = ("q2a", "qa2r", "q2ar", "accuracy", "vqa_accuracy")
FULL = "full"


@dataclass
class RunRecord:
    """One run directory, as the report sees it."""

    path: str                          # relative to the runs folder
    status: str
    dataset: str
    student: str
    method: str
    teachers: str
    shots: str                         # "k<K>" or "full"
    seed: int | None
    eval: dict[str, dict[str, float]]
    provenance: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    cw_fired: dict[str, float] = field(default_factory=dict)   # stage -> fraction of instances

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.student, self.method, self.teachers)


@dataclass
class Cell:
    values: list[float]
    runs: list[str]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None for a single run."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - 1))

    def text(self) -> str:
        std = self.std
        return f"{self.mean:.2f} ± {std:.2f} (n={self.n})" if std is not None \
            else f"{self.mean:.2f} (n={self.n})"


# ----------------------------------------------------------------------------- reading

def shots_label(shots: Any) -> str:
    return FULL if shots in (None, FULL) else f"k{int(shots)}"


def read_run(path: Path, root: Path) -> RunRecord:
    """A run's metrics.json (+ config.json when present)."""
    metrics = json.loads(path.read_text(encoding="utf-8"))
    config_path = path.parent / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    shots = metrics.get("shots", config.get("per_category"))
    return RunRecord(
        path=path.parent.relative_to(root).as_posix(), status=str(metrics.get("status", "?")),
        dataset=str(metrics.get("dataset") or config.get("dataset") or "?"),
        student=str(metrics.get("student") or config.get("student") or "?"),
        method=str(metrics.get("method") or config.get("method") or "?"),
        teachers=teachers_label(metrics.get("teachers")), shots=shots_label(shots),
        seed=metrics.get("seed", config.get("seed")), eval=dict(metrics.get("eval") or {}),
        provenance=dict(metrics.get("provenance") or {}), config=config,
        cw_fired=dict(metrics.get("cw_fired") or {}))


def collect_runs(runs_dir: str | Path) -> list[RunRecord]:
    """Every run under `runs_dir` (any depth), sorted by path. Unreadable files raise."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"no runs folder at {root}")
    records = []
    for path in sorted(root.rglob("metrics.json")):
        try:
            records.append(read_run(path, root))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"{path}: not a readable metrics.json ({exc})") from None
    return records


def collect_zero_shot(runs_dir: str | Path) -> list[dict[str, Any]]:
    from madcache.evaluation.zeroshot import RESULT_JSON, load_zero_shot

    return [load_zero_shot(p) for p in sorted(Path(runs_dir).rglob(RESULT_JSON))]


# ----------------------------------------------------------------------------- aggregation

CellKey = tuple[str, str, str, str, str, str, str]  # dataset, student, method, teachers, split, shots, metric


def aggregate(records: Iterable[RunRecord]) -> dict[CellKey, Cell]:
    """Cells over seeds from the complete runs: (dataset, row, split, shots, metric) -> Cell."""
    cells: dict[CellKey, Cell] = {}
    for record in records:
        if record.status != "complete":
            continue
        for split, result in record.eval.items():
            for metric, value in (result or {}).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                key = (record.dataset, *record.row, split, record.shots, metric)
                cell = cells.setdefault(key, Cell([], []))
                cell.values.append(float(value))
                cell.runs.append(record.path)
    return cells


def cw_cells(records: Iterable[RunRecord]) -> dict[tuple[str, str, str, str, str, str], Cell]:
    """CW firing rates (percent of a stage's training instances) over seeds, from the complete
    runs: (dataset, student, method, teachers, stage, shots) -> Cell."""
    cells: dict[tuple[str, str, str, str, str, str], Cell] = {}
    for record in records:
        if record.status != "complete":
            continue
        for stage, fraction in record.cw_fired.items():
            key = (record.dataset, *record.row, stage, record.shots)
            cell = cells.setdefault(key, Cell([], []))
            cell.values.append(100.0 * float(fraction))
            cell.runs.append(record.path)
    return cells


def cw_markdown(cells: Mapping[tuple[str, str, str, str, str, str], Cell]) -> str:
    """One table per dataset: how often confidence weighting fired (so a run whose teacher is
    never more confident than its student, i.e. MAD silently reduced to MD, is visible)."""
    parts = []
    for dataset in sorted({k[0] for k in cells}):
        keys = [k for k in cells if k[0] == dataset]
        columns = sorted({(k[4], k[5]) for k in keys}, key=lambda c: (c[0], _shots_sort(c[1])))
        header = ["student", "method", "teachers", *(f"{s} {shots}" for s, shots in columns)]
        lines = [f"### {dataset}: CW fired (% of training instances)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in sorted({k[1:4] for k in keys}, key=lambda r: (r[0], _method_sort(r[1]), r[2])):
            values = [cells[(dataset, *row, *c)].text() if (dataset, *row, *c) in cells else ""
                      for c in columns]
            lines.append("| " + " | ".join([*row, *values]) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _shots_sort(label: str) -> tuple[int, int]:
    return (1, 0) if label == FULL else (0, int(label[1:]))


def _method_sort(method: str) -> tuple[int, str]:
    if method in METHOD_ORDER:
        return (0, f"{METHOD_ORDER.index(method):02d}")
    return (2 if method.startswith("adapter-") else 1, method)


def _metric_sort(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)


def settings(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> list[tuple[str, str]]:
    """The (split, shots) columns of one table: splits in name order (`val` before `val_sm`),
    shots ascending, full last."""
    found = {(k[4], k[5]) for k in cells if k[0] == dataset and k[6] == metric}
    return sorted(found, key=lambda s: (s[0], _shots_sort(s[1])))


def rows(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> list[tuple[str, str, str]]:
    found = {k[1:4] for k in cells if k[0] == dataset and k[6] == metric}
    return sorted(found, key=lambda r: (r[0], _method_sort(r[1]), r[2]))


def tables(cells: Mapping[CellKey, Cell]) -> list[tuple[str, str]]:
    """(dataset, metric) of every table, in a stable order."""
    found = {(k[0], k[6]) for k in cells}
    return sorted(found, key=lambda t: (t[0], _metric_sort(t[1])))


# ----------------------------------------------------------------------------- output

def markdown_table(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> str:
    columns = settings(cells, dataset, metric)
    header = ["student", "method", "teachers", *(f"{split} {shots}" for split, shots in columns)]
    lines = [f"### {dataset}: {metric}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for row in rows(cells, dataset, metric):
        values = [cells[(dataset, *row, split, shots, metric)].text()
                  if (dataset, *row, split, shots, metric) in cells else ""
                  for split, shots in columns]
        lines.append("| " + " | ".join([*row, *values]) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(cells: Mapping[CellKey, Cell], records: Sequence[RunRecord],
                    zero_shot: Sequence[Mapping[str, Any]]) -> str:
    from madcache.evaluation.zeroshot import zero_shot_markdown

    complete = sum(r.status == "complete" for r in records)
    parts = ["# Report", "",
             f"{complete} complete run(s) of {len(records)}. Cells: mean ± sample std "
             "(ddof = 1) over seeds, n = runs; every run is listed in runs.csv.", ""]
    parts += [markdown_table(cells, d, m) for d, m in tables(cells)]
    fired = cw_cells(records)
    if fired:
        parts.append(cw_markdown(fired))
    parts += [zero_shot_markdown(result) for result in zero_shot]
    return "\n".join(parts)


CELL_FIELDS = ("dataset", "student", "method", "teachers", "split", "shots", "metric", "mean",
               "std", "n", "runs")


def cell_rows(cells: Mapping[CellKey, Cell],
              zero_shot: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for dataset, metric in tables(cells):
        for row in rows(cells, dataset, metric):
            for split, shots in settings(cells, dataset, metric):
                cell = cells.get((dataset, *row, split, shots, metric))
                if cell is None:
                    continue
                std = cell.std
                out.append(dict(zip(CELL_FIELDS, (dataset, *row, split, shots, metric,
                                                  round(cell.mean, 6),
                                                  "" if std is None else round(std, 6),
                                                  cell.n, ";".join(cell.runs)))))
    for result in zero_shot:
        for protocol, scores in result["protocols"].items():
            for metric, value in scores["overall"].items():
                if metric == "n":
                    continue
                out.append(dict(zip(CELL_FIELDS, (
                    result["dataset"], "-", f"zero-shot:{protocol}",
                    teachers_label(result.get("teachers")), result.get("split") or "",
                    "zero-shot", metric, round(float(value), 6), "", 1, result.get("cache", "")))))
    return out


RUN_FIELDS = ("run", "status", "dataset", "student", "method", "teachers", "shots", "seed",
              "eval", "cache_fingerprint", "split_file", "split_digest", "git_commit",
              "madcache_version", "cw_fired", "config")


def run_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    return [{"run": r.path, "status": r.status, "dataset": r.dataset, "student": r.student,
             "method": r.method, "teachers": r.teachers, "shots": r.shots, "seed": r.seed,
             "eval": json.dumps(r.eval, sort_keys=True),
             **{k: r.provenance.get(k, "") for k in RUN_FIELDS[9:14]},
             "cw_fired": json.dumps(r.cw_fired, sort_keys=True) if r.cw_fired else "",
             "config": json.dumps(r.config, sort_keys=True)} for r in records]


def write_csv(path: Path, fields: Sequence[str], data: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        for item in data:
            writer.writerow({k: "" if item.get(k) is None else item.get(k) for k in fields})


def plot_cells(cells: Mapping[CellKey, Cell], zero_shot: Sequence[Mapping[str, Any]],
               out: Path) -> list[Path]:
    """One PNG per (dataset, split, metric): mean vs shots per row, error bars = sample std;
    zero-shot results and chance as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    written = []
    for dataset, metric in tables(cells):
        for split in sorted({s for s, _ in settings(cells, dataset, metric)}):
            shots = sorted({k[5] for k in cells if k[0] == dataset and k[6] == metric
                            and k[4] == split}, key=_shots_sort)
            fig, ax = plt.subplots(figsize=(6, 4))
            lines = rows(cells, dataset, metric)
            for j, row in enumerate(lines):
                dodge = (j - (len(lines) - 1) / 2) * 0.04     # keep error bars apart
                points = [(i + dodge, cells[(dataset, *row, split, s, metric)])
                          for i, s in enumerate(shots) if (dataset, *row, split, s, metric) in cells]
                if points:
                    ax.errorbar([i for i, _ in points], [c.mean for _, c in points],
                                yerr=[c.std or 0.0 for _, c in points], marker="o", capsize=3,
                                label=" / ".join(p for p in row if p != "-"))
            _reference_lines(ax, zero_shot, dataset, split, metric)
            ax.set_xticks(range(len(shots)), shots)
            ax.set_xlabel("training examples per category")
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{dataset} {split}: {metric}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"{dataset}-{split}-{metric}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def _reference_lines(ax, zero_shot: Sequence[Mapping[str, Any]], dataset: str, split: str,
                     metric: str) -> None:
    for result in zero_shot:
        if result.get("dataset") != dataset or result.get("split") != split:
            continue
        for k, (protocol, scores) in enumerate(result["protocols"].items()):
            if metric in scores["overall"]:
                ax.axhline(scores["overall"][metric], linestyle=("--", "-.")[k % 2], linewidth=1,
                           label=f"zero-shot {protocol}", color=("grey", "tab:brown")[k % 2])
        if metric in result.get("chance", {}):
            ax.axhline(result["chance"][metric], linestyle=":", linewidth=1, color="black",
                       label="chance")


def build_report(runs_dir: str | Path, *, out: str | Path | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Read every run under `runs_dir` and write report.md, report.csv, runs.csv and plots to
    `out` (default: `runs_dir`). Returns the Markdown, the cells and the written paths."""
    records = collect_runs(runs_dir)
    zero_shot = collect_zero_shot(runs_dir)
    cells = aggregate(records)
    out = Path(out if out is not None else runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(cells, records, zero_shot)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    write_csv(out / "report.csv", CELL_FIELDS, cell_rows(cells, zero_shot))
    write_csv(out / "runs.csv", RUN_FIELDS, run_rows(records))
    images = plot_cells(cells, zero_shot, out) if plots else []
    return {"markdown": markdown, "cells": cells, "records": records,
            "files": [out / "report.md", out / "report.csv", out / "runs.csv", *images]}
