"""Reports: every run under a runs folder, aggregated into the paper's table shape.

Rows are (student, method, teachers); columns are settings (evaluated split x shots, e.g.
`val k100`, `val_sm full`), one table per (dataset, metric). A cell is the mean over seeds with
the *sample* standard deviation (ddof = 1; empty for a single run) and the number of runs n.
Methods of a sweep share seeds and low-shot splits, so each table is followed by the **paired
difference to the baseline** method: per seed, method - baseline, with its mean and 95% intervals
over the seeds both have (`madcache.experiments.stats`).
Outputs: `report.md` (tables, paired tables, zero-shot results), `report.csv` (one row per cell,
long format, with the run directories behind it), `paired.csv` (one row per paired cell, both
intervals), `runs.csv` (one row per run with its provenance: cache fingerprint, split file and
digest, seed, git commit, CW firing rates, config) and PNG plots, per (dataset, split, metric):
metric vs shots per method with the 95% t interval of the mean, and the paired differences with
their intervals around a zero line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from madcache.core.errors import ConfigError, UnknownNameError
from madcache.evaluation.zeroshot import teachers_label
from madcache.experiments.stats import Interval, PairedDifference, paired_difference, sample_std, \
    t_interval
from madcache.method.methods import METHOD_ORDER

METRIC_ORDER = ("q2a", "qa2r", "q2ar", "accuracy", "vqa_accuracy")
FULL = "full"
BASELINE = "baseline"     # the method every other one is paired with, unless told otherwise


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
    seeds: list[int | None] = field(default_factory=list)   # of each value, when known

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
                cell.seeds.append(record.seed if isinstance(record.seed, int) else None)
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


def ordered_keys(cells: Mapping[CellKey, Cell]) -> list[CellKey]:
    """Every cell's key in report order: tables, then rows, then settings."""
    return [(dataset, *row, split, shots, metric)
            for dataset, metric in tables(cells) for row in rows(cells, dataset, metric)
            for split, shots in settings(cells, dataset, metric)
            if (dataset, *row, split, shots, metric) in cells]


# ----------------------------------------------------------------------------- pairing

@dataclass
class Pairing:
    """A method's cell paired seed by seed with the baseline's cell of the same setting."""

    baseline: str
    baseline_teachers: str
    difference: PairedDifference


def check_baseline(cells: Mapping[CellKey, Cell], baseline: str) -> None:
    """A baseline the user named must have complete runs (the default one may be absent)."""
    methods = sorted({k[2] for k in cells}, key=_method_sort)
    if baseline not in methods:
        raise UnknownNameError(f"--baseline {baseline!r}: no complete runs of that method; "
                               f"methods found: {', '.join(methods) or 'none'}")


def paired_cells(cells: Mapping[CellKey, Cell],
                 baseline: str = BASELINE) -> dict[CellKey, Pairing]:
    """Every other method's cell paired with the `baseline` cell of the same dataset, student,
    split, shots and metric: the baseline row with the same teachers if there is one, else the
    only baseline row (a baseline trains without a teacher cache, so its teachers are "-"). Seeds
    are the pairing key; runs of a seed the other side lacks are counted, not paired."""
    baselines: dict[tuple[str, ...], dict[str, Cell]] = {}
    for key, cell in cells.items():
        if key[2] == baseline:
            baselines.setdefault((key[0], key[1], *key[4:]), {})[key[3]] = cell
    pairs = {}
    for key, cell in cells.items():
        candidates = baselines.get((key[0], key[1], *key[4:]), {})
        teachers = _baseline_teachers(key[3], candidates)
        if key[2] == baseline or teachers is None:
            continue
        method_values, method_left = cell.by_seed()
        baseline_values, baseline_left = candidates[teachers].by_seed()
        pairs[key] = Pairing(baseline, teachers, paired_difference(
            method_values, baseline_values, unpaired_method=method_left,
            unpaired_baseline=baseline_left))
    return pairs


def _baseline_teachers(teachers: str, candidates: Mapping[str, Cell]) -> str | None:
    """The baseline row (by its teachers) a row with `teachers` pairs with, if any."""
    if teachers in candidates:
        return teachers
    return next(iter(candidates)) if len(candidates) == 1 else None


def paired_text(difference: PairedDifference) -> str:
    """`+2.50 [+0.41, +4.59] * (n=4, 1 unpaired)`: mean [95% t interval], * when it excludes 0."""
    if difference.n == 0:
        text = "no common seed"
    else:
        interval = difference.t
        text = f"{difference.mean:+.2f}"
        if interval is not None:
            text += f" [{interval.low:+.2f}, {interval.high:+.2f}]"
            text += " *" if interval.excludes_zero else ""
    left = difference.unpaired_method + difference.unpaired_baseline
    return f"{text} (n={difference.n}" + (f", {left} unpaired)" if left else ")")


# ----------------------------------------------------------------------------- output

def markdown_grid(title: str, columns: Sequence[tuple[str, str]],
                  row_keys: Sequence[tuple[str, str, str]],
                  text: Callable[..., str]) -> str:
    """A table: rows (student, method, teachers) x columns (split, shots); `text(*row, split,
    shots)` gives a cell ("" for none)."""
    header = ["student", "method", "teachers", *(f"{split} {shots}" for split, shots in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in row_keys:
        lines.append("| " + " | ".join([*row, *(text(*row, *c) for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> str:
    def text(*key: str) -> str:
        cell = cells.get((dataset, *key, metric))
        return "" if cell is None else cell.text()

    return markdown_grid(f"{dataset}: {metric}", settings(cells, dataset, metric),
                         rows(cells, dataset, metric), text)


def paired_markdown(cells: Mapping[CellKey, Cell], pairs: Mapping[CellKey, Pairing],
                    dataset: str, metric: str, baseline: str) -> str:
    """The paired table of one (dataset, metric); "" when nothing pairs."""
    def text(*key: str) -> str:
        pairing = pairs.get((dataset, *key, metric))
        return "" if pairing is None else paired_text(pairing.difference)

    keys = [k[1:6] for k in pairs if k[0] == dataset and k[6] == metric]
    if not keys:
        return ""
    columns = [c for c in settings(cells, dataset, metric) if c in {k[3:] for k in keys}]
    paired_rows = [r for r in rows(cells, dataset, metric) if r in {k[:3] for k in keys}]
    return markdown_grid(f"{dataset}: {metric}, paired difference to {baseline}", columns,
                         paired_rows, text)


def paired_note(cells: Mapping[CellKey, Cell], baseline: str) -> str:
    if not any(k[2] == baseline for k in cells):
        return f"Paired differences to `{baseline}`: omitted, no complete `{baseline}` runs."
    return (f"Paired tables: per seed, method minus `{baseline}` (same seed, same low-shot split); "
            "mean [95% t interval] over the seeds both have, n = pairs, runs of a seed the other "
            "side lacks are left out and counted as unpaired; * = the interval excludes 0. "
            "paired.csv adds the percentile bootstrap interval.")


def markdown_report(cells: Mapping[CellKey, Cell], records: Sequence[RunRecord],
                    zero_shot: Sequence[Mapping[str, Any]], *,
                    baseline: str = BASELINE) -> str:
    from madcache.evaluation.zeroshot import zero_shot_markdown

    complete = sum(r.status == "complete" for r in records)
    pairs = paired_cells(cells, baseline)
    parts = ["# Report", "",
             f"{complete} complete run(s) of {len(records)}. Cells: mean ± sample std "
             "(ddof = 1) over seeds, n = runs; every run is listed in runs.csv.", "",
             paired_note(cells, baseline), ""]
    for dataset, metric in tables(cells):
        parts.append(markdown_table(cells, dataset, metric))
        paired = paired_markdown(cells, pairs, dataset, metric, baseline)
        if paired:
            parts.append(paired)
    fired = cw_cells(records)
    if fired:
        parts.append(cw_markdown(fired))
    parts += [zero_shot_markdown(result) for result in zero_shot]
    return "\n".join(parts)


CELL_FIELDS = ("dataset", "student", "method", "teachers", "split", "shots", "metric", "mean",
               "std", "ci_low", "ci_high", "n", "runs")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def cell_rows(cells: Mapping[CellKey, Cell],
              zero_shot: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """report.csv: one row per cell; `ci_low`/`ci_high` = the 95% t interval of the mean."""
    out = []
    for key in ordered_keys(cells):
        cell, interval = cells[key], cells[key].interval
        out.append(dict(zip(CELL_FIELDS[:7], key), mean=_rounded(cell.mean),
                        std=_rounded(cell.std), ci_low=_rounded(interval and interval.low),
                        ci_high=_rounded(interval and interval.high), n=cell.n,
                        runs=";".join(cell.runs)))
    for result in zero_shot:
        for protocol, scores in result["protocols"].items():
            for metric, value in scores["overall"].items():
                if metric == "n":
                    continue
                out.append(dict(zip(CELL_FIELDS[:7], (
                    result["dataset"], "-", f"zero-shot:{protocol}",
                    teachers_label(result.get("teachers")), result.get("split") or "",
                    "zero-shot", metric)), mean=round(float(value), 6), n=1,
                    runs=result.get("cache", "")))
    return out


PAIRED_FIELDS = ("dataset", "student", "method", "teachers", "baseline", "baseline_teachers",
                 "split", "shots", "metric", "n_pairs", "unpaired_method", "unpaired_baseline",
                 "mean_diff", "std_diff", "t_low", "t_high", "t_excludes_zero", "boot_low",
                 "boot_high", "boot_excludes_zero", "seeds", "differences")


def paired_rows(cells: Mapping[CellKey, Cell],
                pairs: Mapping[CellKey, Pairing]) -> list[dict[str, Any]]:
    """paired.csv: one row per paired cell, both 95% intervals (t and percentile bootstrap)."""
    out = []
    for key in (k for k in ordered_keys(cells) if k in pairs):
        dataset, student, method, teachers, split, shots, metric = key
        pairing = pairs[key]
        d = pairing.difference
        t, boot = d.t, d.bootstrap
        out.append({
            "dataset": dataset, "student": student, "method": method, "teachers": teachers,
            "baseline": pairing.baseline, "baseline_teachers": pairing.baseline_teachers,
            "split": split, "shots": shots, "metric": metric, "n_pairs": d.n,
            "unpaired_method": d.unpaired_method, "unpaired_baseline": d.unpaired_baseline,
            "mean_diff": _rounded(d.mean), "std_diff": _rounded(d.std),
            "t_low": _rounded(t and t.low), "t_high": _rounded(t and t.high),
            "t_excludes_zero": t and t.excludes_zero,
            "boot_low": _rounded(boot and boot.low), "boot_high": _rounded(boot and boot.high),
            "boot_excludes_zero": boot and boot.excludes_zero,
            "seeds": ";".join(map(str, d.seeds)),
            "differences": ";".join(f"{v:.6g}" for v in d.differences)})
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


Series = list[tuple[str, list[tuple[int, float, float]]]]   # label, [(x, y, error half-width)]


def plot_cells(cells: Mapping[CellKey, Cell], zero_shot: Sequence[Mapping[str, Any]],
               out: Path, *, pairs: Mapping[CellKey, Pairing] | None = None,
               baseline: str = BASELINE) -> list[Path]:
    """Per (dataset, split, metric): a PNG of the mean vs shots per row, error bars = the 95% t
    interval of the mean, zero-shot results and chance as horizontal lines; and, where methods
    pair with the baseline, a `-paired` PNG of the mean differences with their 95% t intervals
    around a zero line."""
    pairs = pairs or {}
    written = []
    for dataset, metric in tables(cells):
        for split in sorted({s for s, _ in settings(cells, dataset, metric)}):
            shots = sorted({k[5] for k in cells if k[0] == dataset and k[6] == metric
                            and k[4] == split}, key=_shots_sort)
            means: Series = []
            differences: Series = []
            for row in rows(cells, dataset, metric):
                keys = [(i, (dataset, *row, split, s, metric)) for i, s in enumerate(shots)]
                means.append((_label(row), [(i, cells[k].mean, _half_width(cells[k].interval))
                                            for i, k in keys if k in cells]))
                paired = [(i, pairs[k].difference) for i, k in keys
                          if k in pairs and pairs[k].difference.n]
                if paired:
                    differences.append((_label(row), [(i, d.mean, _half_width(d.t))
                                                      for i, d in paired]))
            fig, ax = _series_plot(means, shots, f"{dataset} {split}: {metric} "
                                   "(95% t interval of the mean)", f"{metric} (%)")
            _reference_lines(ax, zero_shot, dataset, split, metric)
            written.append(_save(fig, ax, out / f"{dataset}-{split}-{metric}.png"))
            if differences:
                fig, ax = _series_plot(differences, shots, f"{dataset} {split}: {metric}, paired "
                                       f"difference to {baseline} (95% t interval)",
                                       f"{metric}: method - {baseline} (points)")
                ax.axhline(0.0, color="black", linewidth=1)
                written.append(_save(fig, ax, out / f"{dataset}-{split}-{metric}-paired.png"))
    return written


def _label(row: tuple[str, str, str]) -> str:
    return " / ".join(p for p in row if p != "-")


def _half_width(interval: Interval | None) -> float:
    return 0.0 if interval is None else interval.half_width


def _series_plot(series: Series, shots: Sequence[str], title: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, (label, points) in enumerate(series):
        dodge = (j - (len(series) - 1) / 2) * 0.04     # keep error bars apart
        if points:
            ax.errorbar([x + dodge for x, _, _ in points], [y for _, y, _ in points],
                        yerr=[e for _, _, e in points], marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(shots)), shots)
    ax.set_xlabel("training examples per category")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return fig, ax


def _save(fig, ax, path: Path) -> Path:
    from matplotlib import pyplot as plt

    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def build_report(runs_dir: str | Path, *, out: str | Path | None = None, plots: bool = True,
                 baseline: str | None = None) -> dict[str, Any]:
    """Read every run under `runs_dir` and write report.md, report.csv, paired.csv, runs.csv and
    plots to `out` (default: `runs_dir`). Methods are paired with `baseline` (default "baseline",
    whose absence only omits the paired tables; a name given must have complete runs). Returns
    the Markdown, the cells, the pairings and the written paths."""
    records = collect_runs(runs_dir)
    zero_shot = collect_zero_shot(runs_dir)
    cells = aggregate(records)
    if baseline is not None:
        check_baseline(cells, baseline)
    baseline = baseline or BASELINE
    pairs = paired_cells(cells, baseline)
    out = Path(out if out is not None else runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(cells, records, zero_shot, baseline=baseline)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    write_csv(out / "report.csv", CELL_FIELDS, cell_rows(cells, zero_shot))
    write_csv(out / "paired.csv", PAIRED_FIELDS, paired_rows(cells, pairs))
    write_csv(out / "runs.csv", RUN_FIELDS, run_rows(records))
    images = plot_cells(cells, zero_shot, out, pairs=pairs, baseline=baseline) \
        if plots else []
    return {"markdown": markdown, "cells": cells, "pairs": pairs, "records": records,
            "files": [out / "report.md", out / "report.csv", out / "paired.csv",
                      out / "runs.csv", *images]}
