"""The settings of the `madcache data` commands (their flags are generated from these fields):
which split to read, a low-shot draw, the shortcut-mitigated VCR split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madcache.core.config import setting
from madcache.data.records import ReadResult

INTO_ROOT_HELP = "Allow --out inside the dataset root (never over a file of it)."


@dataclass(frozen=True, kw_only=True)
class ReadConfig:
    """A dataset split to read."""

    dataset: str = setting(names="dataset", help="A registered dataset.")
    root: Path = setting(help="The dataset's root folder.")
    split: str = setting(help="train/val/test (dev for SNLI-VE) or a .jsonl path under the root.")
    skip_bad: bool = setting(
        False, help="Skip malformed records and list them, instead of stopping."
    )
    read_options: dict[str, Any] = setting(
        factory=dict,
        flag="read-option",
        deprecated=("option",),
        help="A dataset reader option (repeatable), e.g. "
        "renderer=NAME or check_files=true; VALUE is "
        "parsed as JSON when it can be.",
    )

    def read(self) -> ReadResult:
        from madcache.data import read_examples

        return read_examples(
            self.dataset, self.root, self.split, skip_bad=self.skip_bad, **self.read_options
        )


@dataclass(frozen=True, kw_only=True)
class LowshotConfig(ReadConfig):
    """A seeded low-shot draw of a split (`madcache data lowshot`)."""

    per_category: int = setting(
        minimum=1, help="Units per category (VCR questions, SNLI-VE / VQA images)."
    )
    seed: int = setting(minimum=0, help="Seed of the draw.")
    out: Path = setting(help="The split file to write (JSON).")
    into_root: bool = setting(False, help=INTO_ROOT_HELP)


@dataclass(frozen=True, kw_only=True)
class SmConfig:
    """The shortcut-mitigated version of a VCR split (`madcache data sm`)."""

    root: Path = setting(help="The VCR root folder.")
    split: str = setting("val", help="val/train/test or a .jsonl path under the root.")
    annotations: Path | None = setting(
        None, help="Read this annotation file instead of the split's."
    )
    out: Path = setting(help="Folder for <split>.jsonl and sm_report.json.")
    skip_bad: bool = setting(
        False, help="Skip malformed records and list them, instead of stopping."
    )
    into_root: bool = setting(False, help=INTO_ROOT_HELP)
