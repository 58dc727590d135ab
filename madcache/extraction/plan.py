"""Which examples go into which shard, and which rows each shard stores.

Examples are grouped by image (images sorted by id, examples in reader order within an image) and
cut into shards of about `shard_size` examples without ever splitting an image's examples, so a
shard encodes and stores each of its images once. Shard numbers depend only on the example list
and `shard_size` (both in the fingerprint), which is what makes resuming exact.

Text rows are per (image, text) pair within a shard: the same string under two images is one
teacher forward but two stored rows, because visual relevance `cos(V_t, word)` depends on the
image. The string itself is encoded once per shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from madcache.core.errors import DataError
from madcache.data.records import Example, Text, image_order


@dataclass
class ShardPlan:
    index: int
    examples: list[Example]
    image_ids: list[str]
    image_paths: list[str]  # relative to the dataset root
    texts: list[Text]  # unique scored strings, each encoded once
    text_rows: np.ndarray  # [n_rows, 2]: (image row, index into `texts`)
    example_image: np.ndarray  # [n_ex] image row
    example_texts: np.ndarray  # [n_ex, C] text rows (the scored texts)
    aux_texts: list[Text] = field(default_factory=list)  # relevance-only texts (prompts)
    example_aux: np.ndarray | None = None  # [n_ex, K] index into `aux_texts`
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # task arrays known up front


def group_into_shards(examples: list[Example], shard_size: int) -> list[list[Example]]:
    """Whole images, sorted by image id, cut after the image that reaches `shard_size`."""
    by_image = image_order(examples)
    shards: list[list[Example]] = []
    current: list[Example] = []
    for _, group in groupby(by_image, key=lambda ex: ex.image_id):
        current.extend(group)
        if len(current) >= shard_size:
            shards.append(current)
            current = []
    if current:
        shards.append(current)
    return shards


def num_choices(examples: list[Example]) -> int:
    """C, the scored texts per example; all examples of a split must agree."""
    counts = {ex.num_choices for ex in examples}
    if len(counts) > 1:
        odd = next(ex for ex in examples if ex.num_choices != examples[0].num_choices)
        raise DataError(
            f"examples have different numbers of choices {sorted(counts)}; a cache "
            "needs one C per split",
            record_id=odd.id,
        )
    return counts.pop() if counts else 0


def build_shard_plan(index: int, examples: list[Example]) -> ShardPlan:
    """Rows for images, unique strings and (image, string) text rows of one shard."""
    image_row: dict[str, int] = {}
    image_paths: list[str] = []
    text_index: dict[str, int] = {}
    texts: list[Text] = []
    row_of: dict[tuple[int, int], int] = {}
    example_image, example_texts = [], []
    for ex in examples:
        if ex.image_id not in image_row:
            image_row[ex.image_id] = len(image_paths)
            image_paths.append(ex.image_path)
        img = image_row[ex.image_id]
        rows = []
        for text in ex.texts:
            if text.text not in text_index:
                text_index[text.text] = len(texts)
                texts.append(text)
            rows.append(row_of.setdefault((img, text_index[text.text]), len(row_of)))
        example_image.append(img)
        example_texts.append(rows)
    text_rows = np.array(list(row_of), dtype=np.int64).reshape(-1, 2)
    c = num_choices(examples)
    return ShardPlan(
        index=index,
        examples=examples,
        image_ids=list(image_row),
        image_paths=image_paths,
        texts=texts,
        text_rows=text_rows,
        example_image=np.array(example_image, dtype=np.int64),
        example_texts=np.array(example_texts, dtype=np.int64).reshape(-1, c),
    )


def unique_texts(per_example: list[list[Text]]) -> tuple[list[Text], np.ndarray]:
    """Deduplicate strings: (unique texts, [n_ex, K] indices into them)."""
    index: dict[str, int] = {}
    unique: list[Text] = []
    rows = []
    for texts in per_example:
        row = []
        for text in texts:
            if text.text not in index:
                index[text.text] = len(unique)
                unique.append(text)
            row.append(index[text.text])
        rows.append(row)
    width = len(rows[0]) if rows else 0
    return unique, np.array(rows, dtype=np.int64).reshape(len(rows), width)
