"""Seeded low-shot splits: k units per category, saved as a small JSON file (MAD.md, protocol).

A unit is what the paper counts: a VCR question (both its `:qa` and `:qar` examples), an SNLI-VE
image (its hypotheses of the class), a VQA image (up to 2 of its questions of the type). A
category with fewer than k units gives all it has, and the shortfall is written into the split.
Each category draws from its own generator seeded by (seed, category), so one category's pool
never changes another's sample.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.core.io import atomic_write_text
from madcache.data.base import DATASETS
from madcache.data.jsonl import load_json_file
from madcache.data.records import Example

FORMAT = "madcache-split/1"
VQA_QUESTIONS_PER_IMAGE = 2


@dataclass
class Split:
    """A low-shot subset: the ids to train on and how they were drawn.

    `counts[c]` = units drawn for category c, `example_counts[c]` = ids they gave,
    `shortfalls[c] = {"wanted": k, "available": n}` where a category had fewer than k units.
    """

    dataset: str
    source_split: str
    params: dict[str, Any]
    ids: list[str]
    counts: dict[str, int]
    example_counts: dict[str, int]
    shortfalls: dict[str, dict[str, int]] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        return save_split(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Split:
        return load_split(path)


def save_split(split: Split, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": FORMAT, **asdict(split)}, indent=1) + "\n")
    return path


def is_split_file(path: Path) -> bool:
    """Whether `path` holds a split madcache saved (its `format` marker)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_split(path: str | Path) -> Split:
    """Read a split file, checking its structure and that its counts add up."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"split file not found: {path}", file=path)
    data = load_json_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(
            f"not a madcache split file (expected format {FORMAT!r})", file=path, field="format"
        )
    expected = {
        "dataset": str,
        "source_split": str,
        "params": dict,
        "ids": list,
        "counts": dict,
        "example_counts": dict,
        "shortfalls": dict,
    }
    for key, kind in expected.items():
        if not isinstance(data.get(key), kind):
            raise DataError(f"must be a {kind.__name__}", file=path, field=key)
    ids = data["ids"]
    if not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        raise DataError("ids must be unique strings", file=path, field="ids")
    if sum(data["example_counts"].values()) != len(ids):
        raise DataError(
            f"example_counts add up to {sum(data['example_counts'].values())} but "
            f"there are {len(ids)} ids; the file was edited by hand?",
            file=path,
            field="example_counts",
        )
    return Split(**{key: data[key] for key in expected})


# ----------------------------------------------------------------------------- sampling


class IndexRow(NamedTuple):
    """What a sampler reads of an `Example`: a split's index holds one per example instead of
    the example (texts, record), so sampling a large split keeps little in memory."""

    id: str
    dataset: str
    split: str
    image_id: str
    category: str
    group: str
    label: int | None


def index(examples: Iterable[Example]) -> list[IndexRow]:
    """The sampler's view of `examples`, in their order (the samplers take either)."""
    return [
        IndexRow(ex.id, ex.dataset, ex.split, ex.image_id, ex.category, ex.group, ex.label)
        for ex in examples
    ]


Units = dict[str, dict[str, list[str]]]  # category -> unit key -> example ids


def _draw(
    units: Units, k: int, seed: int, pick: Callable[[random.Random, list[str]], list[str]]
) -> tuple[set[str], dict[str, int], dict[str, int], dict[str, dict[str, int]]]:
    chosen: set[str] = set()
    counts: dict[str, int] = {}
    example_counts: dict[str, int] = {}
    shortfalls: dict[str, dict[str, int]] = {}
    for category in sorted(units):
        rng = random.Random(f"{seed}:{category}")
        keys = sorted(units[category])
        drawn = rng.sample(keys, min(k, len(keys)))
        ids = [i for key in drawn for i in pick(rng, units[category][key])]
        chosen.update(ids)
        counts[category] = len(drawn)
        example_counts[category] = len(ids)
        if len(keys) < k:
            shortfalls[category] = {"wanted": k, "available": len(keys)}
    return chosen, counts, example_counts, shortfalls


def _split(
    examples: Sequence[Example | IndexRow],
    units: Units,
    k: int,
    seed: int,
    unit: str,
    pick: Callable[[random.Random, list[str]], list[str]] = lambda rng, ids: ids,
    **params: Any,
) -> Split:
    if k < 1:
        raise ConfigError(f"per-category k must be >= 1, got {k}")
    chosen, counts, example_counts, shortfalls = _draw(units, k, seed, pick)
    first = examples[0]
    return Split(
        dataset=first.dataset,
        source_split=first.split,
        params={"per_category": k, "seed": seed, "unit": unit, **params},
        ids=[ex.id for ex in examples if ex.id in chosen],
        counts=counts,
        example_counts=example_counts,
        shortfalls=shortfalls,
    )


def _group(pairs: Iterable[tuple[str, str, str]]) -> Units:
    units: Units = defaultdict(lambda: defaultdict(list))
    for category, key, example_id in pairs:
        units[category][key].append(example_id)
    return {c: dict(u) for c, u in units.items()}


def sample_groups(examples: Sequence[Example | IndexRow], *, k: int, seed: int) -> Split:
    """k groups per category, each with all its examples (an example without a group is its
    own group). VCR: k questions, each with its `:qa` and `:qar` examples."""
    units = _group((ex.category, ex.group or ex.id, ex.id) for ex in examples)
    return _split(examples, units, k, seed, unit="group")


sample_vcr = sample_groups


def sample_snli_ve(examples: Sequence[Example | IndexRow], *, k: int, seed: int) -> Split:
    """Per class, k images, each with all its hypotheses of that class (unlabelled ones are
    never drawn)."""
    units = _group((ex.category, ex.image_id, ex.id) for ex in examples if ex.label is not None)
    return _split(examples, units, k, seed, unit="image")


def sample_vqa(
    examples: Sequence[Example | IndexRow],
    *,
    k: int,
    seed: int,
    per_image: int = VQA_QUESTIONS_PER_IMAGE,
) -> Split:
    """Per question type, k images, each with up to `per_image` of its questions of the type."""
    units = _group((ex.category, ex.image_id, ex.id) for ex in examples)

    def pick(rng: random.Random, ids: list[str]) -> list[str]:
        return ids if len(ids) <= per_image else rng.sample(sorted(ids), per_image)

    return _split(examples, units, k, seed, unit="image", pick=pick, questions_per_image=per_image)


def sample_per_category(examples: Sequence[Example | IndexRow], *, k: int, seed: int) -> Split:
    """The dataset's own sampler: the `sample` of the spec named by `examples[0].dataset`."""
    if not examples:
        raise ConfigError("cannot sample a low-shot split from no examples")
    return DATASETS.get(examples[0].dataset).sample(examples, k=k, seed=seed)
