"""A report's PNG plots, per (dataset, split, metric): the metric vs shots per row with the 95%
t interval of the mean (zero-shot results and chance as horizontal lines), and the paired
differences to the baseline with their intervals around a zero line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.experiments.cells import (
    BASELINE,
    Cell,
    CellKey,
    Pairing,
    Setting,
    rows,
    settings,
    shots_order,
    tables,
)
from madcache.experiments.runs import Row
from madcache.experiments.stats import Interval

Series = list[tuple[str, list[tuple[int, float, float]]]]  # label, [(x, y, error half-width)]


def plot_cells(
    cells: Mapping[CellKey, Cell],
    zero_shot: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    pairs: Mapping[CellKey, Pairing] | None = None,
    baseline: str = BASELINE,
) -> list[Path]:
    """Per (dataset, split, metric): a PNG of the mean vs shots per row, error bars = the 95% t
    interval of the mean, zero-shot results and chance as horizontal lines; and, where methods
    pair with the baseline, a `-paired` PNG of the mean differences with their 95% t intervals
    around a zero line."""
    pairs = pairs or {}
    written = []
    for dataset, metric in tables(cells):
        for split in sorted({s.split for s in settings(cells, dataset, metric)}):
            shots = sorted(
                {
                    k.shots
                    for k in cells
                    if k.dataset == dataset and k.metric == metric and k.split == split
                },
                key=shots_order,
            )
            means: Series = []
            differences: Series = []
            for row in rows(cells, dataset, metric):
                keys = [
                    (i, CellKey.of(dataset, row, Setting(split, s), metric))
                    for i, s in enumerate(shots)
                ]
                means.append(
                    (
                        _label(row),
                        [
                            (i, cells[k].mean, _half_width(cells[k].interval))
                            for i, k in keys
                            if k in cells
                        ],
                    )
                )
                paired = [
                    (i, pairs[k].difference)
                    for i, k in keys
                    if k in pairs and pairs[k].difference.n
                ]
                if paired:
                    differences.append(
                        (_label(row), [(i, d.mean, _half_width(d.t)) for i, d in paired])
                    )
            fig, ax = _series_plot(
                means,
                shots,
                f"{dataset} {split}: {metric} (95% t interval of the mean)",
                f"{metric} (%)",
            )
            _reference_lines(ax, zero_shot, dataset, split, metric)
            written.append(_save(fig, ax, out / f"{dataset}-{split}-{metric}.png"))
            if differences:
                fig, ax = _series_plot(
                    differences,
                    shots,
                    f"{dataset} {split}: {metric}, paired "
                    f"difference to {baseline} (95% t interval)",
                    f"{metric}: method - {baseline} (points)",
                )
                ax.axhline(0.0, color="black", linewidth=1)
                written.append(_save(fig, ax, out / f"{dataset}-{split}-{metric}-paired.png"))
    return written


def _label(row: Row) -> str:
    return " / ".join(p for p in row if p != "-")


def _half_width(interval: Interval | None) -> float:
    return 0.0 if interval is None else interval.half_width


def _series_plot(series: Series, shots: Sequence[str], title: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, (label, points) in enumerate(series):
        dodge = (j - (len(series) - 1) / 2) * 0.04  # keep error bars apart
        if points:
            ax.errorbar(
                [x + dodge for x, _, _ in points],
                [y for _, y, _ in points],
                yerr=[e for _, _, e in points],
                marker="o",
                capsize=3,
                label=label,
            )
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


def _reference_lines(
    ax, zero_shot: Sequence[Mapping[str, Any]], dataset: str, split: str, metric: str
) -> None:
    for result in zero_shot:
        if result.get("dataset") != dataset or result.get("split") != split:
            continue
        for k, (protocol, scores) in enumerate(result["protocols"].items()):
            if metric in scores["overall"]:
                ax.axhline(
                    scores["overall"][metric],
                    linestyle=("--", "-.")[k % 2],
                    linewidth=1,
                    label=f"zero-shot {protocol}",
                    color=("grey", "tab:brown")[k % 2],
                )
        if metric in result.get("chance", {}):
            ax.axhline(
                result["chance"][metric], linestyle=":", linewidth=1, color="black", label="chance"
            )
