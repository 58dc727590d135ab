"""The settings of `madcache eval` and `madcache predict` (their flags are generated from these
fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from madcache.core.config import setting
from madcache.core.errors import ConfigError

RUN_HELP = "A run directory written by `madcache train`."
ROOT_HELP = "Dataset root, if it moved since training."


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Score a run on a split (optionally shortcut-mitigated), or a teacher zero-shot from its
    cache."""

    run: Path | None = setting(None, existing_path=True, help=RUN_HELP)
    split: str = setting("val", help="The split to score.")
    sm: bool = setting(False, help="Evaluate the shortcut-mitigated split (VCR).")
    root: str | None = setting(None, help=ROOT_HELP)
    regions: str | None = setting(None, help="Region store of the split (default: the run's).")
    zero_shot: bool = setting(False, help="Teacher-only accuracy from a cache.")
    cache: str | None = setting(None, help="The cache to score with --zero-shot.")

    def __post_init__(self) -> None:
        if self.zero_shot and self.cache is None:
            raise ConfigError("--zero-shot needs --cache PATH")
        if not self.zero_shot and self.run is None:
            raise ConfigError("give --run runs/NAME (or --zero-shot --cache PATH)")


@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    """A run's predictions on a split, written in the dataset's submission format."""

    run: Path = setting(existing_path=True, help=RUN_HELP)
    split: str = setting("test", help="The split to predict.")
    out: Path = setting(help="The file to write (.csv for VCR, .json for VQA, .jsonl for SNLI-VE).")
    root: str | None = setting(None, help=ROOT_HELP)
    regions: str | None = setting(
        None, help="Region store holding the split's images (region students)."
    )
    force: bool = setting(False, help="Replace an existing --out file.")
