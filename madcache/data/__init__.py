"""Dataset layer: readers of the original VCR / SNLI-VE / VQA v2 files, splits, SM, demo world.

Adding a dataset = one module with a `Dataset` and one `DATASETS.register` line below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from madcache.data.base import DATASETS, Dataset
from madcache.data.records import BadRecord, Example, ReadResult, Text, Word
from madcache.data.snli_ve import SnliVeDataset
from madcache.data.vcr import VcrDataset
from madcache.data.vqa import VqaDataset

DATASETS.register("vcr", VcrDataset())
DATASETS.register("snli-ve", SnliVeDataset())
DATASETS.register("vqa", VqaDataset())


def read_examples(dataset: str, root: str | Path, split: str, *, skip_bad: bool = False,
                  **options: Any) -> ReadResult:
    """Read one split of a registered dataset from its original files under `root`."""
    return DATASETS.get(dataset).read(Path(root), split, skip_bad=skip_bad, **options)


__all__ = ["DATASETS", "Dataset", "Example", "Text", "Word", "BadRecord", "ReadResult",
           "read_examples"]
