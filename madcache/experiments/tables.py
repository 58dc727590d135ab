"""A report's tables: report.md (Markdown tables, paired tables, CW firing rates, zero-shot
results) and its CSV files: report.csv (one row per cell, with the run directories behind it),
paired.csv (one row per paired cell, both intervals, the MDE and the seeds for ±3) and runs.csv
(one row per run with its provenance: cache fingerprint, split file and digest, seed, git
commit, CW firing rates, config)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.core.io import atomic_write_text
from madcache.evaluation.zeroshot import teachers_label, zero_shot_markdown
from madcache.experiments.cells import (
    BASELINE,
    Cell,
    CellKey,
    CwKey,
    Pairing,
    Setting,
    cw_cells,
    ordered_keys,
    paired_cells,
    row_order,
    rows,
    settings,
    shots_order,
    tables,
    transfer_cells,
)
from madcache.experiments.runs import Row, RunRecord
from madcache.experiments.stats import HALF_WIDTH, PairedDifference

REPORT_TITLE = "# Report"  # the first line of every report.md (a rerun may replace it)


# ----------------------------------------------------------------------------- report.md


def markdown_grid(
    title: str,
    columns: Sequence[Setting],
    row_keys: Sequence[Row],
    text: Callable[[Row, Setting], str],
) -> str:
    """A table: rows (student, method, teachers) x columns (split, shots); `text(row, column)`
    gives a cell ("" for none)."""
    header = ["student", "method", "teachers", *(f"{split} {shots}" for split, shots in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in row_keys:
        lines.append("| " + " | ".join([*row, *(text(row, c) for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(cells: Mapping[CellKey, Cell], dataset: str, metric: str) -> str:
    def text(row: Row, setting: Setting) -> str:
        cell = cells.get(CellKey.of(dataset, row, setting, metric))
        return "" if cell is None else cell.text()

    return markdown_grid(
        f"{dataset}: {metric}", settings(cells, dataset, metric), rows(cells, dataset, metric), text
    )


def paired_text(difference: PairedDifference) -> str:
    """`+2.50 [+0.41, +4.59] * (n=4, 1 unpaired); MDE 2.79, ±3 needs n=4`: mean [95% t
    interval], * when it excludes 0, then the comparison's power (`power_text`)."""
    if difference.n == 0:
        text = "no common seed"
    else:
        interval = difference.t
        text = f"{difference.mean:+.2f}"
        if interval is not None:
            text += f" [{interval.low:+.2f}, {interval.high:+.2f}]"
            text += " *" if interval.excludes_zero else ""
    left = difference.unpaired_method + difference.unpaired_baseline
    text += f" (n={difference.n}" + (f", {left} unpaired)" if left else ")")
    power = power_text(difference)
    return f"{text}; {power}" if power else text


def power_text(difference: PairedDifference) -> str:
    """`MDE 2.79, ±3 needs n=4`: the minimum detectable effect at the comparison's n (two-sided
    5%, 80% power) and the seeds a ±3-point t interval needs, both at the observed paired std;
    "" below two pairs."""
    mde, needed = difference.mde, difference.seeds_needed
    if mde is None or needed is None:
        return ""
    return f"MDE {mde:.2f}, ±{HALF_WIDTH:g} needs n={needed}"


def paired_markdown(
    cells: Mapping[CellKey, Cell],
    pairs: Mapping[CellKey, Pairing],
    dataset: str,
    metric: str,
    baseline: str,
) -> str:
    """The paired table of one (dataset, metric); "" when nothing pairs."""

    def text(row: Row, setting: Setting) -> str:
        pairing = pairs.get(CellKey.of(dataset, row, setting, metric))
        return "" if pairing is None else paired_text(pairing.difference)

    keys = [k for k in pairs if k.dataset == dataset and k.metric == metric]
    if not keys:
        return ""
    columns = [c for c in settings(cells, dataset, metric) if c in {k.setting for k in keys}]
    paired_rows = [r for r in rows(cells, dataset, metric) if r in {k.row for k in keys}]
    return markdown_grid(
        f"{dataset}: {metric}, paired difference to {baseline}", columns, paired_rows, text
    )


def paired_note(cells: Mapping[CellKey, Cell], baseline: str) -> str:
    if not any(k.method == baseline for k in cells):
        return f"Paired differences to `{baseline}`: omitted, no complete `{baseline}` runs."
    return (
        f"Paired tables: per seed, method minus `{baseline}` (same seed, same low-shot split); "
        "mean [95% t interval] over the seeds both have, n = pairs, runs of a seed the other "
        "side lacks are left out and counted as unpaired; * = the interval excludes 0. "
        "MDE = the minimum detectable effect at that n (paired t-test, two-sided 5%, 80% "
        f"power, at the observed paired std); ±{HALF_WIDTH:g} needs n = the seeds a "
        f"±{HALF_WIDTH:g}-point t interval would need at that std. An interval that includes "
        "0 with an MDE above the effect of interest cannot decide: too few seeds. "
        "paired.csv adds the percentile bootstrap interval."
    )


def cw_markdown(
    cells: Mapping[CwKey, Cell], title: str = "{dataset}: CW fired (% of training instances)"
) -> str:
    """One table per dataset: how often confidence weighting fired (so a run whose teacher is
    never more confident than its student, i.e. MAD silently reduced to MD, is visible); with
    another `title`, any per-run measure keyed like it (the transfer diagnostics)."""
    parts = []
    for dataset in sorted({k.dataset for k in cells}):
        keys = [k for k in cells if k.dataset == dataset]

        def text(row: Row, column: Setting) -> str:
            cell = cells.get(CwKey(dataset, *row, *column))
            return "" if cell is None else cell.text()

        columns = sorted(
            {Setting(k.stage, k.shots) for k in keys}, key=lambda c: (c.split, shots_order(c.shots))
        )
        parts.append(
            markdown_grid(
                title.format(dataset=dataset),
                columns,
                sorted({k.row for k in keys}, key=row_order),
                text,
            )
        )
    return "\n".join(parts)


def markdown_report(
    cells: Mapping[CellKey, Cell],
    records: Sequence[RunRecord],
    zero_shot: Sequence[Mapping[str, Any]],
    *,
    baseline: str = BASELINE,
) -> str:
    complete = sum(r.complete for r in records)
    pairs = paired_cells(cells, baseline)
    parts = [
        REPORT_TITLE,
        "",
        f"{complete} complete run(s) of {len(records)}. Cells: mean ± sample std "
        "(ddof = 1) over seeds, n = runs; every run is listed in runs.csv.",
        "",
        paired_note(cells, baseline),
        "",
    ]
    for dataset, metric in tables(cells):
        parts.append(markdown_table(cells, dataset, metric))
        paired = paired_markdown(cells, pairs, dataset, metric, baseline)
        if paired:
            parts.append(paired)
    fired = cw_cells(records)
    if fired:
        parts.append(cw_markdown(fired))
    moved = transfer_cells(records)
    if moved:
        parts += [cw_markdown(moved, TRANSFER_TITLE), TRANSFER_NOTE, ""]
    parts += [zero_shot_markdown(result) for result in zero_shot]
    return "\n".join(parts)


TRANSFER_TITLE = "{dataset}: did distillation transfer? (held-out eval examples)"
TRANSFER_NOTE = (
    "Projected student features against the teacher's on held-out examples "
    "(docs/evaluation.md): centred cosine 0 and R² <= the mean-only R² mean the "
    "student matched only the targets' mean; distilled zero-shot is the student "
    "scoring the choices by cos(P_v V_s, P_t T_s), as the teacher does."
)


# ----------------------------------------------------------------------------- CSV files

CELL_FIELDS = (
    "dataset",
    "student",
    "method",
    "teachers",
    "split",
    "shots",
    "metric",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "n",
    "runs",
)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def cell_rows(
    cells: Mapping[CellKey, Cell], zero_shot: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """report.csv: one row per cell; `ci_low`/`ci_high` = the 95% t interval of the mean."""
    out = []
    for key in ordered_keys(cells):
        cell, interval = cells[key], cells[key].interval
        out.append(
            {
                **key._asdict(),
                "mean": _rounded(cell.mean),
                "std": _rounded(cell.std),
                "ci_low": _rounded(interval and interval.low),
                "ci_high": _rounded(interval and interval.high),
                "n": cell.n,
                "runs": ";".join(cell.runs),
            }
        )
    for result in zero_shot:
        for protocol, scores in result["protocols"].items():
            for metric, value in scores["overall"].items():
                if metric == "n":
                    continue
                key = CellKey(
                    result["dataset"],
                    "-",
                    f"zero-shot:{protocol}",
                    teachers_label(result.get("teachers")),
                    result.get("split") or "",
                    "zero-shot",
                    metric,
                )
                out.append(
                    {
                        **key._asdict(),
                        "mean": round(float(value), 6),
                        "n": 1,
                        "runs": result.get("cache", ""),
                    }
                )
    return out


SEEDS_NEEDED_FIELD = f"seeds_for_half_width_{HALF_WIDTH:g}"
PAIRED_FIELDS = (
    "dataset",
    "student",
    "method",
    "teachers",
    "baseline",
    "baseline_teachers",
    "split",
    "shots",
    "metric",
    "n_pairs",
    "unpaired_method",
    "unpaired_baseline",
    "mean_diff",
    "std_diff",
    "t_low",
    "t_high",
    "t_excludes_zero",
    "boot_low",
    "boot_high",
    "boot_excludes_zero",
    "mde",
    SEEDS_NEEDED_FIELD,
    "seeds",
    "differences",
)


def paired_rows(
    cells: Mapping[CellKey, Cell], pairs: Mapping[CellKey, Pairing]
) -> list[dict[str, Any]]:
    """paired.csv: one row per paired cell, both 95% intervals (t and percentile bootstrap), the
    minimum detectable effect and the seeds a ±HALF_WIDTH-point t interval needs."""
    out = []
    for key in (k for k in ordered_keys(cells) if k in pairs):
        pairing = pairs[key]
        d = pairing.difference
        t, boot = d.t, d.bootstrap
        out.append(
            {
                **key._asdict(),
                "baseline": pairing.baseline,
                "baseline_teachers": pairing.baseline_teachers,
                "n_pairs": d.n,
                "unpaired_method": d.unpaired_method,
                "unpaired_baseline": d.unpaired_baseline,
                "mean_diff": _rounded(d.mean),
                "std_diff": _rounded(d.std),
                "t_low": _rounded(t and t.low),
                "t_high": _rounded(t and t.high),
                "t_excludes_zero": t and t.excludes_zero,
                "boot_low": _rounded(boot and boot.low),
                "boot_high": _rounded(boot and boot.high),
                "boot_excludes_zero": boot and boot.excludes_zero,
                "mde": _rounded(d.mde),
                SEEDS_NEEDED_FIELD: d.seeds_needed,
                "seeds": ";".join(map(str, d.seeds)),
                "differences": ";".join(f"{v:.6g}" for v in d.differences),
            }
        )
    return out


RUN_FIELDS = (
    "run",
    "status",
    "dataset",
    "student",
    "method",
    "teachers",
    "shots",
    "seed",
    "eval",
    "cache_fingerprint",
    "split_file",
    "split_digest",
    "git_commit",
    "madcache_version",
    "cw_fired",
    "config",
)
PROVENANCE_FIELDS = RUN_FIELDS[9:14]


def run_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    return [
        {
            "run": r.path,
            "status": r.status,
            "dataset": r.dataset,
            "student": r.student,
            "method": r.method,
            "teachers": r.teachers,
            "shots": r.shots,
            "seed": r.seed,
            "eval": json.dumps(r.eval, sort_keys=True),
            **{k: r.provenance.get(k, "") for k in PROVENANCE_FIELDS},
            "cw_fired": json.dumps(r.cw_fired, sort_keys=True) if r.cw_fired else "",
            "config": json.dumps(r.config, sort_keys=True),
        }
        for r in records
    ]


def write_csv(path: Path, fields: Sequence[str], data: Iterable[Mapping[str, Any]]) -> None:
    """Atomic: a refused write (a full disk) leaves the old file or none, never half of one."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=list(fields))
    writer.writeheader()
    for item in data:
        writer.writerow({k: "" if item.get(k) is None else item.get(k) for k in fields})
    atomic_write_text(path, handle.getvalue())
