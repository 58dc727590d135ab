"""SNLI-VE reader: `snli_ve_{train,dev,test}.jsonl` (Xie et al. 2019), one example per pair.

Both the current format (`Flickr30K_ID: "123"`) and the old generator's (`Flikr30kID:
"123.jpg"`, misspelt key, ".jpg" included) are read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from madcache.core.errors import DataError, DataFileNotFoundError
from madcache.data.base import StreamingReader, reader_options
from madcache.data.jsonl import guarded, iter_json_lines, split_file
from madcache.data.paths import safe_join
from madcache.data.records import BadRecord, Example, Text, without_labels

LABELS = ("entailment", "neutral", "contradiction")
UNLABELLED = "unlabelled"
SPLIT_FILES = {name: f"snli_ve_{name}.jsonl" for name in ("train", "dev", "test")}
IMAGE_KEYS = ("Flickr30K_ID", "Flikr30kID")
IMAGE_DIRS = ("flickr30k_images", "Flickr30K/flickr30k_images", "images", ".")
DEFAULT_OPTIONS: dict[str, Any] = {"images_dir": None, "check_files": False}


def default_images_dir(root: Path) -> str:
    """The first of `IMAGE_DIRS` that exists under root ("." always does)."""
    return next(d for d in IMAGE_DIRS if (Path(root) / d).is_dir())


def _image_id(record: Mapping[str, Any], where: dict[str, Any]) -> str:
    key = next((k for k in IMAGE_KEYS if k in record), None)
    if key is None:
        raise DataError(
            f"missing the image id (one of {', '.join(IMAGE_KEYS)})", **where, field=IMAGE_KEYS[0]
        )
    values = {_bare(record[k]) for k in IMAGE_KEYS if k in record}
    if len(values) > 1:
        raise DataError(
            f"{' and '.join(IMAGE_KEYS)} name different images "
            f"({', '.join(sorted(map(str, values)))}); keep one",
            **where,
            field=key,
        )
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"image id must be a non-empty string, got {value!r}", **where, field=key)
    return value[: -len(".jpg")] if value.endswith(".jpg") else value


def _bare(value: Any) -> Any:
    """An image id as both formats write it: "123", 123 and "123.jpg" are one image."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return text[: -len(".jpg")] if isinstance(text, str) and text.endswith(".jpg") else text


def _label(record: Mapping[str, Any], where: dict[str, Any]) -> int | None:
    gold = record.get("gold_label")
    if gold is None:
        return None
    if gold not in LABELS:
        raise DataError(
            f"unknown gold_label {gold!r}; expected one of {', '.join(LABELS)}",
            **where,
            field="gold_label",
        )
    return LABELS.index(gold)


def record_example(
    record: Mapping[str, Any],
    *,
    split: str,
    file: object,
    line: int,
    root: Path,
    images_dir: str,
    check_files: bool,
) -> Example:
    pair_id = record.get("pairID")
    where: dict[str, Any] = {
        "file": file,
        "line": line,
        "record_id": pair_id if isinstance(pair_id, str) else None,
    }
    if not isinstance(pair_id, str) or not pair_id:
        raise DataError("missing or empty pairID", **where, field="pairID")
    hypothesis = record.get("sentence2")
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        raise DataError(
            "empty text: the hypothesis must be a non-empty string", **where, field="sentence2"
        )
    image_id = _image_id(record, where)
    label = _label(record, where)
    relative = (
        str(PurePosixPath(images_dir) / f"{image_id}.jpg")
        if images_dir != "."
        else f"{image_id}.jpg"
    )
    full = safe_join(root, relative, file=file, line=line, field="Flickr30K_ID")
    if check_files and not full.is_file():
        raise DataFileNotFoundError(
            f"image {full} does not exist; check --root and the images_dir option",
            **where,
            field="Flickr30K_ID",
        )
    premise = record.get("sentence1")  # the Flickr30k caption the hypothesis came from
    return Example(
        id=pair_id,
        dataset="snli-ve",
        split=split,
        image_id=image_id,
        image_path=relative,
        choices=(Text.from_string(hypothesis),),
        label=label,
        label_free_text=Text.from_string(premise)
        if isinstance(premise, str) and premise.strip()
        else None,
        category=UNLABELLED if label is None else LABELS[label],
        raw=record,
    )


def label_free_view(example: Example) -> Example:
    """An SNLI-VE pair as adaptive finetuning may see it: no label, its category (the label's
    name) unlabelled, none of the original record (`gold_label`, `annotator_labels`). The
    pairID, whose last letter is the label's, is replaced by the training setup's opaque id."""
    return without_labels(example, category=UNLABELLED)


class SnliVeReader(StreamingReader):
    """The reader of SNLI-VE. Options: `images_dir`, `check_files`."""

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        return [split_file(Path(root), split, SPLIT_FILES)]

    def resolve_options(self, **options: Any) -> dict[str, Any]:
        """Every option with its default filled in and its value normalised (what a cache
        fingerprint records)."""
        return reader_options("snli-ve", options, DEFAULT_OPTIONS)

    def iter_examples(
        self,
        root: Path,
        split: str,
        *,
        skip_bad: bool = False,
        skipped: list[BadRecord] | None = None,
        only: Collection[str] | None = None,
        **options: Any,
    ) -> Iterator[Example]:
        """`read`'s examples one record at a time, with the same refusals (records skipped
        under `skip_bad` go to `skipped`). `only`: build just the examples with these ids and
        pass over the other records unchecked (a second read, after a whole one checked them)."""
        opts = self.resolve_options(**options)
        root = Path(root)
        images_dir = opts["images_dir"] or default_images_dir(root)
        check_files = opts["check_files"]
        path = split_file(root, split, SPLIT_FILES)
        skipped = [] if skipped is None else skipped
        seen: dict[str, int] = {}

        def convert(line: int, record: Any) -> Example:
            if isinstance(record, DataError):
                raise record
            example = record_example(
                record,
                split=split,
                file=path,
                line=line,
                root=root,
                images_dir=images_dir,
                check_files=check_files,
            )
            if example.id in seen:
                raise DataError(
                    f"duplicate pairID (first seen on line {seen[example.id]})",
                    file=path,
                    line=line,
                    field="pairID",
                    record_id=example.id,
                )
            seen[example.id] = line
            return example

        for line, record in iter_json_lines(path):
            pair_id = record.get("pairID") if isinstance(record, dict) else None
            if only is not None and isinstance(pair_id, str) and pair_id not in only:
                continue
            example = guarded(lambda: convert(line, record), skipped, skip_bad)
            if example is not None:
                yield example
