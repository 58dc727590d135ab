"""VCR reader: the original `train/val/test.jsonl` annotations (Zellers et al. 2019).

Each annotation gives two examples: `<annot_id>:qa` (question -> 4 answers) and `<annot_id>:qar`
(question + correct answer -> 4 rationales), in one `group` so Q2AR can join them. Object
references are lists of 0-based indices into `objects`; they become words ("person1") whose
`Word.boxes` keep the indices, so a student can ground them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.data.base import StreamingReader, reader_options
from madcache.data.categories import vcr_category
from madcache.data.jsonl import guarded, iter_json_lines, load_json_file, split_file
from madcache.data.paths import safe_join
from madcache.data.records import BadRecord, Example, Text, Word, without_labels

SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
MODES = ("qa", "qar")
RENDERERS = ("tag", "class", "name")
NUM_CHOICES = 4
REQUIRED_KEYS = (
    "annot_id",
    "objects",
    "img_fn",
    "metadata_fn",
    "question",
    "answer_choices",
    "rationale_choices",
)

# Gender-neutral names for the "name" renderer (R2C's list, its duplicate "Peyton" removed).
# Person i is called NAMES[i % len(NAMES)].
NAMES = (
    "Casey",
    "Riley",
    "Jessie",
    "Jackie",
    "Avery",
    "Jaime",
    "Peyton",
    "Kerry",
    "Jody",
    "Kendall",
    "Skyler",
    "Frankie",
    "Pat",
    "Quinn",
)

DEFAULT_OPTIONS: dict[str, Any] = {
    "modes": MODES,
    "renderer": "tag",
    "images_dir": "vcr1images",
    "annotations": None,
    "check_files": False,
}

Token = Any  # str, or a list of object indices


# ----------------------------------------------------------------------------- rendering


def reference_name(index: int, objects: Sequence[str], renderer: str) -> str:
    """The word for object `index`: "person1" (tag), "person" (class) or "Casey" (name)."""
    name = objects[index]
    if renderer == "tag":
        return f"{name}{index + 1}"
    if renderer == "name" and name == "person":
        return NAMES[index % len(NAMES)]
    return name


def _reference_parts(
    indices: Sequence[int], objects: Sequence[str], renderer: str
) -> list[tuple[str, tuple[int, ...], bool]]:
    """(word, boxes, glued to the previous word) of one reference, in the given order:
    "a", "a and b", "a, b and c"."""
    names = [(reference_name(i, objects, renderer), (i,), False) for i in indices]
    if len(names) == 1:
        return names
    parts: list[tuple[str, tuple[int, ...], bool]] = []
    for name in names[:-2]:
        parts += [name, (",", (), True)]
    return parts + [names[-2], ("and", (), False), names[-1]]


def render_tokens(tokens: Sequence[Token], objects: Sequence[str], renderer: str = "tag") -> Text:
    """Join VCR tokens with single spaces; each original token is one `Word`. A reference with
    several indices gives several words ("person2 and person1"; "a, b and c")."""
    pieces: list[str] = []
    words: list[Word] = []
    end = 0
    for token in tokens:
        parts = (
            [(token, (), False)]
            if isinstance(token, str)
            else _reference_parts(token, objects, renderer)
        )
        for part, boxes, glued in parts:
            if end and not glued:
                pieces.append(" ")
                end += 1
            words.append(Word(part, end, end + len(part), boxes))
            pieces.append(part)
            end += len(part)
    return Text("".join(pieces), tuple(words))


# ----------------------------------------------------------------------------- validation


def _check_tokens(tokens: Any, objects: Sequence[str], where: dict[str, Any]) -> None:
    if not isinstance(tokens, list) or not tokens:
        raise DataError("empty text: expected a non-empty list of tokens", **where)
    for position, token in enumerate(tokens):
        if isinstance(token, str):
            if not token.strip():
                raise DataError(f"token {position} is an empty string", **where)
            continue
        if (
            not isinstance(token, list)
            or not token
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in token)
        ):
            raise DataError(
                f"token {position} must be a word or a non-empty list of object "
                f"indices, got {token!r}",
                **where,
            )
        for index in token:
            if not 0 <= index < len(objects):
                raise DataError(
                    f"token {position}: object index {index} is out of range "
                    f"(the record has {len(objects)} objects)",
                    **where,
                )


def _check_label(record: Mapping[str, Any], key: str, where: dict[str, Any]) -> int | None:
    label = record.get(key)
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CHOICES:
        raise DataError(
            f"label must be an integer in 0..{NUM_CHOICES - 1}, got {label!r}",
            **{**where, "field": key},
        )
    return label


def validate_record(
    record: Mapping[str, Any], *, file: object, line: int | None
) -> tuple[int | None, int | None]:
    """Check one VCR annotation; returns its (answer_label, rationale_label), None if absent."""
    annot_id = record.get("annot_id")
    where: dict[str, Any] = {
        "file": file,
        "line": line,
        "record_id": annot_id if isinstance(annot_id, str) else None,
    }
    for key in REQUIRED_KEYS:
        if key not in record:
            raise DataError(f"missing required key '{key}'", **where, field=key)
    if not isinstance(annot_id, str) or not annot_id:
        raise DataError("annot_id must be a non-empty string", **where, field="annot_id")
    objects = record["objects"]
    if not isinstance(objects, list) or not all(isinstance(o, str) and o for o in objects):
        raise DataError("objects must be a list of class names", **where, field="objects")
    for key in ("img_fn", "metadata_fn"):
        if not isinstance(record[key], str) or not record[key]:
            raise DataError("must be a non-empty relative path", **where, field=key)
    _check_tokens(record["question"], objects, {**where, "field": "question"})
    for key in ("answer_choices", "rationale_choices"):
        choices = record[key]
        if not isinstance(choices, list) or len(choices) != NUM_CHOICES:
            count = len(choices) if isinstance(choices, list) else type(choices).__name__
            raise DataError(f"expected {NUM_CHOICES} choices, got {count}", **where, field=key)
        for c, tokens in enumerate(choices):
            _check_tokens(tokens, objects, {**where, "field": f"{key}[{c}]"})
    labels = {key: _check_label(record, key, where) for key in ("answer_label", "rationale_label")}
    given = [key for key, label in labels.items() if label is not None]
    if len(given) == 1:  # stats and lowshot would count it, training would refuse it
        missing = next(key for key in labels if key not in given)
        raise DataError(
            f"has {given[0]} but no {missing}: a labelled record has both, a test record neither",
            **where,
            field=missing,
        )
    return labels["answer_label"], labels["rationale_label"]


# ----------------------------------------------------------------------------- examples


def _relative(images_dir: str, name: str) -> str:
    return str(PurePosixPath(images_dir) / name) if images_dir not in ("", ".") else name


def _file_paths(
    record: Mapping[str, Any],
    root: Path,
    images_dir: str,
    check_files: bool,
    file: object,
    line: int | None,
) -> dict[str, str]:
    """`img_fn` / `metadata_fn` relative to root, checked not to escape it (and to exist)."""
    paths = {}
    for key in ("img_fn", "metadata_fn"):
        relative = _relative(images_dir, record[key])
        full = safe_join(root, relative, file=file, line=line, field=key)
        if check_files and not full.is_file():
            raise DataFileNotFoundError(
                f"{key} {full} does not exist; check --root and the images_dir option",
                file=file,
                line=line,
                field=key,
                record_id=record["annot_id"],
            )
        paths[key] = relative
    return paths


def record_examples(
    record: Mapping[str, Any],
    *,
    split: str,
    file: object,
    line: int | None,
    root: Path,
    modes: Sequence[str] = MODES,
    renderer: str = "tag",
    images_dir: str = "vcr1images",
    check_files: bool = False,
) -> list[Example]:
    """The `qa` / `qar` examples of one VCR annotation (validated first)."""
    answer_label, rationale_label = validate_record(record, file=file, line=line)
    annot_id = record["annot_id"]
    paths = _file_paths(record, root, images_dir, check_files, file, line)
    objects = record["objects"]
    question = render_tokens(record["question"], objects, renderer)
    answers = tuple(render_tokens(t, objects, renderer) for t in record["answer_choices"])
    common = dict(
        dataset="vcr",
        split=split,
        group=annot_id,
        raw=record,
        label_free_text=question.concat(objects_text(objects)),
        image_id=str(record.get("img_id") or record["img_fn"]),
        image_path=paths["img_fn"],
        meta_path=paths["metadata_fn"],
        category=vcr_category(
            (question if renderer == "tag" else render_tokens(record["question"], objects)).text
        ),
    )
    examples = []
    if "qa" in modes:
        examples.append(
            Example(
                id=f"{annot_id}:qa", context=question, choices=answers, label=answer_label, **common
            )
        )
    if "qar" in modes and answer_label is not None:
        rationales = tuple(render_tokens(t, objects, renderer) for t in record["rationale_choices"])
        examples.append(
            Example(
                id=f"{annot_id}:qar",
                choices=rationales,
                label=rationale_label,
                context=question.concat(answers[answer_label]),
                **common,
            )
        )
    return examples


def objects_text(objects: Sequence[str]) -> Text:
    """The image's detected objects as words ("objects: person, person, bag."): with the
    question, the image-specific label-free text of adaptive finetuning's image-text matching
    (a question alone, "What is person1 doing?", fits nearly every image)."""
    return Text.from_string("objects: " + ", ".join(objects) + ".")


def label_free_view(example: Example) -> Example | None:
    """A VCR example as adaptive finetuning may see it (MAD.md: no task labels). A Q->A example
    shows the question with each of its four answers alike, so it stays (unlabelled). A QA->R
    example is left out: its context is the question with the *correct* answer, which is the
    Q->A label itself."""
    if example.id.endswith(":qar"):
        return None
    return without_labels(example, keep_raw=UNLABELLED_KEYS)


# The keys of a VCR record that say nothing of its labels: not `answer_label`/`rationale_label`,
# nor `answer_orig`/`rationale_orig` (the correct texts), `*_sources`/`*_match_iter` (where the
# correct choice came from), or the rationales (the correct one restates the answer).
UNLABELLED_KEYS = (
    "annot_id",
    "movie",
    "img_fn",
    "metadata_fn",
    "img_id",
    "objects",
    "question",
    "question_orig",
    "answer_choices",
    "question_number",
)


def conditioned_rationale_examples(example: Example, renderer: str = "tag") -> list[Example]:
    """For a `:qa` example, the QA->R example conditioned on each answer choice i (context =
    question + answer i; id `<annot_id>:qar|a<i>`, unlabelled): what the VCR leaderboard's
    `rationale_conditioned_on_a<i>_<j>` columns are computed from when the answer is unknown."""
    record = example.raw
    rationales = tuple(
        render_tokens(t, record["objects"], _renderer(renderer))
        for t in record["rationale_choices"]
    )
    return [
        dataclasses.replace(
            example,
            id=f"{example.group}:qar|a{i}",
            label=None,
            context=example.context.concat(answer),
            choices=rationales,
        )
        for i, answer in enumerate(example.choices)
    ]


def _modes(value: Any) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in value.split(",")) if isinstance(value, str) else tuple(value)
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"option modes must be a subset of {', '.join(MODES)}, got {value!r}")
    return modes


def _renderer(value: Any) -> str:
    if value not in RENDERERS:
        raise ConfigError(f"option renderer must be one of {', '.join(RENDERERS)}, got {value!r}")
    return value


class VcrReader(StreamingReader):
    """The reader of VCR. Options: `modes`, `renderer`, `images_dir`, `annotations`,
    `check_files` (see docs/datasets.md)."""

    def annotation_file(self, root: Path, split: str, annotations: str | None = None) -> Path:
        if annotations is not None:
            return Path(annotations)
        return split_file(Path(root), split, SPLIT_FILES)

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        return [self.annotation_file(root, split, options.get("annotations"))]

    def resolve_options(self, **options: Any) -> dict[str, Any]:
        """Every option with its default filled in and its value normalised (what a cache
        fingerprint records: `renderer="tag"` given or left out is the same read)."""
        return reader_options(
            "vcr",
            options,
            DEFAULT_OPTIONS,
            modes=lambda value: list(_modes(value)),
            renderer=_renderer,
            images_dir=str,
        )

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
        under `skip_bad` go to `skipped`). What it keeps across records is per id and per
        image, not the records, so a caller that keeps few examples reads a split in little
        memory (the low-shot path of `madcache.train.setup`). `only`: build just the examples
        with these ids and pass over the other records unchecked (a second read, after a whole
        one checked them)."""
        opts = self.resolve_options(**options)
        settings = {key: opts[key] for key in ("modes", "renderer", "images_dir", "check_files")}
        path = self.annotation_file(Path(root), split, opts["annotations"])
        skipped = [] if skipped is None else skipped
        seen: dict[str, tuple[int, bytes]] = {}
        images: dict[str, tuple[int, str]] = {}
        for line, record in iter_json_lines(path):
            annot_id = record.get("annot_id") if isinstance(record, dict) else None
            if (
                only is not None
                and isinstance(annot_id, str)
                and not any(f"{annot_id}:{mode}" in only for mode in MODES)
            ):
                continue
            found = guarded(
                lambda: self._convert(record, seen, path, line, root, split, settings),
                skipped,
                skip_bad,
            )
            found = (
                guarded(lambda: _one_file_per_image(found, images, path, line), skipped, skip_bad)
                if found
                else found
            )
            yield from (ex for ex in found or [] if only is None or ex.id in only)

    @staticmethod
    def _convert(
        record: Any,
        seen: dict[str, tuple[int, bytes]],
        path: Path,
        line: int,
        root: Path,
        split: str,
        settings: dict[str, Any],
    ) -> list[Example]:
        if isinstance(record, DataError):
            raise record
        examples = record_examples(
            record, split=split, file=path, line=line, root=Path(root), **settings
        )
        annot_id = record["annot_id"]
        digest = _digest(record)
        if annot_id in seen:
            first_line, first = seen[annot_id]
            kind = "an identical copy" if first == digest else "a conflicting copy"
            raise DataError(
                f"duplicate annot_id: {kind} of line {first_line}; ids must be "
                "unique (--skip-bad keeps the first and reports this one)",
                file=path,
                line=line,
                field="annot_id",
                record_id=annot_id,
            )
        seen[annot_id] = (line, digest)
        return examples


def _digest(record: Mapping[str, Any]) -> bytes:
    """A record's content in 16 bytes (keys sorted): what tells an identical duplicate from a
    conflicting one without keeping every record."""
    return hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=16).digest()


def _one_file_per_image(
    examples: list[Example], images: dict[str, tuple[int, str]], path: Path, line: int
) -> list[Example]:
    """Refuse a record whose `img_id` names another record's image file: caches and region
    stores key images by id, so the example would get the other image's features."""
    example = examples[0]
    first_line, first_file = images.setdefault(example.image_id, (line, example.image_path))
    if first_file != example.image_path:
        raise DataError(
            f"img_id {example.image_id!r} names {example.image_path} here but "
            f"{first_file} on line {first_line}; an image id must name one file",
            file=path,
            line=line,
            field="img_id",
            record_id=example.group,
        )
    return examples


# ----------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class VcrMetadata:
    """One image's detections: `boxes` [N, 5] float32 (x1, y1, x2, y2, score), `names` (the
    classes, equal to the annotation's `objects`), image size, and polygon `segms`."""

    boxes: np.ndarray
    names: list[str]
    width: int
    height: int
    segms: list[Any]


def _check_boxes(boxes: np.ndarray, path: Path) -> None:
    """Boxes are finite, with x1 <= x2 and y1 <= y2 (an inverted or infinite box would be
    clipped to a wrong region without a word)."""
    if not np.isfinite(boxes).all():
        row = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        raise DataError(
            f"box {row} holds a non-finite number: {boxes[row].tolist()}", file=path, field="boxes"
        )
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(inverted):
        raise DataError(
            f"box {int(inverted[0])} is inverted (x2 < x1 or y2 < y1): "
            f"{boxes[inverted[0], :4].tolist()}",
            file=path,
            field="boxes",
        )


def load_vcr_metadata(root: str | Path, example: Example) -> VcrMetadata:
    """Read and validate the metadata json of `example` (boxes match the objects it names)."""
    if example.meta_path is None:
        raise DataError(f"example {example.id} has no metadata file", record_id=example.id)
    path = safe_join(root, example.meta_path, field="metadata_fn")
    if not path.is_file():
        raise DataFileNotFoundError(
            f"metadata file not found: {path}", file=path, record_id=example.id
        )
    data = load_json_file(path)
    for key in ("boxes", "names", "width", "height", "segms"):
        if key not in data:
            raise DataError(f"missing required key '{key}'", file=path, field=key)
    try:
        boxes = np.asarray(data["boxes"], dtype=np.float32).reshape(len(data["boxes"]), -1)
    except (TypeError, ValueError):
        raise DataError(
            "boxes must be a list of [x1, y1, x2, y2, score]", file=path, field="boxes"
        ) from None
    names = data["names"]
    if boxes.shape[1:] != (5,) and len(boxes):
        raise DataError(
            f"boxes must have 5 numbers each, got shape {boxes.shape}", file=path, field="boxes"
        )
    if len(names) != len(boxes) or len(data["segms"]) != len(boxes):
        raise DataError(
            f"{len(boxes)} boxes but {len(names)} names and {len(data['segms'])} segms",
            file=path,
            field="names",
        )
    objects = example.raw.get("objects")
    if objects is not None and list(objects) != list(names):
        raise DataError(
            f"names {names} differ from the annotation's objects {objects}",
            file=path,
            field="names",
            record_id=example.id,
        )
    for key in ("width", "height"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] <= 0:
            raise DataError(f"must be a positive integer, got {data[key]!r}", file=path, field=key)
    _check_boxes(boxes.reshape(-1, 5), path)
    return VcrMetadata(
        boxes.reshape(-1, 5), list(names), data["width"], data["height"], data["segms"]
    )
