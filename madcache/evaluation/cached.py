"""The examples behind a cache, for scoring teachers and adapters from it: stand-ins built from
its index (id, image, label, group, category: what the metrics and the low-shot samplers read),
or the dataset's own examples where a metric needs more than the index holds (VQA's human
answers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.core.errors import ConfigError
from madcache.data.records import Example

UNCATEGORISED = "all"


def index_examples(cache: Any, dataset: str | None = None) -> list[Example]:
    """Stand-in `Example`s (no texts) of every cached example, in index order, from the index
    of an open cache; `dataset` defaults to the manifest's."""
    dataset = dataset or cache.manifest.get("dataset", "")
    split = cache.manifest.get("split") or ""
    return [
        Example(
            id=row["example_id"],
            dataset=dataset,
            split=split,
            image_id=row.get("image_id") or "",
            image_path="",
            choices=(),
            label=row.get("label"),
            category=row.get("category") or UNCATEGORISED,
            group=row.get("group") or "",
        )
        for row in cache.index().to_pylist()
    ]


def dataset_examples(
    dataset: str,
    root: str | Path,
    split: str | None,
    ids: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> list[Example]:
    """The dataset's own examples of `ids` (in that order), read from its files under `root`."""
    from madcache.data import read_examples

    if split is None:
        raise ConfigError("the cache's manifest does not name its split")
    read = read_examples(dataset, root, split, **dict(options or {}))
    by_id = {ex.id: ex for ex in read.examples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ConfigError(
            f"{len(missing)} cached examples (e.g. {missing[0]!r}) are not in "
            f"{dataset} {split} under {root}: is this the root the cache was "
            "built from?"
        )
    return [by_id[i] for i in ids]
