"""The runs a report reads: every run directory under a runs folder (its metrics.json, and
config.json when present) and every zero-shot result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from madcache.core.errors import ConfigError
from madcache.evaluation.zeroshot import teachers_label

FULL = "full"


class Row(NamedTuple):
    """A row of the report's tables: which model was trained, how, and on which teachers."""

    student: str
    method: str
    teachers: str


@dataclass
class RunRecord:
    """One run directory, as the report sees it."""

    path: str  # relative to the runs folder
    status: str
    dataset: str
    student: str
    method: str
    teachers: str
    shots: str  # "k<K>" or "full"
    seed: int | None
    eval: dict[str, dict[str, float]]
    provenance: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    cw_fired: dict[str, float] = field(default_factory=dict)  # stage -> fraction of instances
    transfer: dict[str, Any] = field(default_factory=dict)  # train/transfer.py

    @property
    def row(self) -> Row:
        return Row(self.student, self.method, self.teachers)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def shots_label(shots: Any) -> str:
    return FULL if shots in (None, FULL) else f"k{int(shots)}"


def read_run(path: Path, root: Path) -> RunRecord:
    """A run's metrics.json (+ config.json when present)."""
    metrics = json.loads(path.read_text(encoding="utf-8"))
    config_path = path.parent / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    shots = metrics.get("shots", config.get("per_category"))
    return RunRecord(
        path=path.parent.relative_to(root).as_posix(),
        status=str(metrics.get("status", "?")),
        dataset=str(metrics.get("dataset") or config.get("dataset") or "?"),
        student=str(metrics.get("student") or config.get("student") or "?"),
        method=str(metrics.get("method") or config.get("method") or "?"),
        teachers=teachers_label(metrics.get("teachers")),
        shots=shots_label(shots),
        seed=metrics.get("seed", config.get("seed")),
        eval=dict(metrics.get("eval") or {}),
        provenance=dict(metrics.get("provenance") or {}),
        config=config,
        cw_fired=dict(metrics.get("cw_fired") or {}),
        transfer=dict(metrics.get("transfer") or {}),
    )


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
