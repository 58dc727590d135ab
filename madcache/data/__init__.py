"""Dataset layer: readers of the original VCR / SNLI-VE / VQA v2 files, splits, SM, demo world.

Each dataset's facts are in its `Dataset` spec below (`madcache/data/base.py` says what each
field decides). Adding a dataset = one reader module and one `DATASETS.register` line.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from madcache.data import lowshot, metrics
from madcache.data.base import CLASSIFICATION, DATASETS, MULTILABEL, MULTIPLE_CHOICE, Dataset
from madcache.data.categories import VCR_CATEGORIES, VQA_CATEGORIES
from madcache.data.records import BadRecord, Example, ReadResult, Text, Word
from madcache.data.snli_ve import LABELS as SNLI_VE_LABELS
from madcache.data.snli_ve import SnliVeReader
from madcache.data.snli_ve import label_free_view as snli_ve_label_free
from madcache.data.vcr import VcrReader
from madcache.data.vcr import label_free_view as vcr_label_free
from madcache.data.vqa import VqaReader

# The built-in readers check that images exist when extraction reads a split.
CHECK_FILES = {"check_files": True}

DATASETS.register(
    "vcr",
    Dataset(
        name="vcr",
        reader=VcrReader(),
        task=MULTIPLE_CHOICE,
        score=metrics.score_vcr,
        sample=lowshot.sample_groups,
        categories=VCR_CATEGORIES,
        chance={"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25},
        teacher_logits="vcr",
        zero_shot="logits",
        submission="vcr-leaderboard",
        sm=True,
        extraction_options=CHECK_FILES,
        label_free=vcr_label_free,
    ),
)
DATASETS.register(
    "snli-ve",
    Dataset(
        name="snli-ve",
        reader=SnliVeReader(),
        task=CLASSIFICATION,
        score=metrics.score_accuracy,
        sample=lowshot.sample_snli_ve,
        categories=SNLI_VE_LABELS,
        label_names=SNLI_VE_LABELS,
        chance={"accuracy": 100.0 / len(SNLI_VE_LABELS)},
        teacher_logits="snli-ve",
        zero_shot="logits",
        submission="snli-ve-predictions",
        extraction_options=CHECK_FILES,
        label_free=snli_ve_label_free,
    ),
)
DATASETS.register(
    "vqa",
    Dataset(
        name="vqa",
        reader=VqaReader(),
        task=MULTILABEL,
        score=metrics.score_vqa,
        sample=lowshot.sample_vqa,
        categories=VQA_CATEGORIES,
        teacher_logits="vqa",
        zero_shot="answer-candidates",
        submission="vqa-results",
        extraction_options=CHECK_FILES,
    ),
)


def read_examples(
    dataset: str, root: str | Path, split: str, *, skip_bad: bool = False, **options: Any
) -> ReadResult:
    """Read one split of a registered dataset from its original files under `root`."""
    return DATASETS.get(dataset).read(Path(root), split, skip_bad=skip_bad, **options)


def iter_examples(
    dataset: str,
    root: str | Path,
    split: str,
    *,
    only: Collection[str] | None = None,
    **options: Any,
) -> Iterator[Example]:
    """`read_examples`' examples one at a time (a bad record raises): each call reads the
    files anew, so a caller that keeps few examples needs little memory. `only`: just the
    examples with these ids, the other records passed over unchecked (a second read)."""
    return DATASETS.get(dataset).iter_examples(Path(root), split, only=only, **options)


__all__ = [
    "DATASETS",
    "Dataset",
    "Example",
    "Text",
    "Word",
    "BadRecord",
    "ReadResult",
    "read_examples",
    "iter_examples",
]
