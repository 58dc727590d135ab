"""The settings of `madcache demo data`, `demo search` and `demo diagnose` (their flags are
generated from these fields; `demo run`'s are `run.DemoConfig`, `demo teacher`'s and
`demo student`'s the pretraining configs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from madcache.core.config import setting
from madcache.core.progress import PROGRESS_HELP
from madcache.demo.world import SIZES

DEMO_OUT_HELP = "The demo folder of `madcache demo run`"
JOBS_HELP = "Training runs at once."


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """The synthetic demo world to generate."""

    out: Path = setting(help="Folder to write (vcr/, snli-ve/, vqa/, captions/ and a DONE marker).")
    size: Literal[tuple(SIZES)] = setting(
        "default", help="small: seconds, for tests; default: the demo's size."
    )
    seed: int = setting(0, minimum=0, help="Seed of the world: same seed, same bytes.")
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """The baseline-only search of the demo's training settings."""

    out: Path = setting(
        Path("demo"),
        help=DEMO_OUT_HELP + " (its world and region store are reused; results go to OUT/search).",
    )
    spec: Path | None = setting(
        None, existing_file=True, help="The search spec (default: madcache/demo/search.toml)."
    )
    jobs: int = setting(2, minimum=1, help=JOBS_HELP)
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass(frozen=True, kw_only=True)
class DiagnoseConfig:
    """The ablation ladder with learning curves and probes."""

    out: Path = setting(Path("demo"), help=DEMO_OUT_HELP + " (results go to OUT/diagnosis).")
    jobs: int = setting(2, minimum=1, help=JOBS_HELP)
    progress: bool = setting(True, help=PROGRESS_HELP)
