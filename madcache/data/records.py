"""The one record type every reader yields, and the words inside its texts.

Words (not sub-tokens) are the unit of token selection and per-word distillation: teacher and
student tokenizers differ, so both sides pool their sub-tokens over a word's character span
(MAD.md, "Token selection"). That keeps cached targets usable by any student.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a `Text`: its characters `text == owner.text[start:end]`.

    `boxes` holds the 0-based object indices a VCR object reference points to (empty otherwise).
    """

    text: str
    start: int
    end: int
    boxes: tuple[int, ...] = ()


# A word is a run of letters/digits (with inner apostrophes or hyphens, "don't", "t-shirt"),
# or a single punctuation character.
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*|[^\w\s]|_", re.UNICODE)


def split_words(text: str) -> tuple[Word, ...]:
    return tuple(Word(m.group(), m.start(), m.end()) for m in _WORD.finditer(text))


@dataclass(frozen=True, slots=True)
class Text:
    """A string and its words with character spans (validated on construction)."""

    text: str
    words: tuple[Word, ...]

    def __post_init__(self) -> None:
        for word in self.words:
            if self.text[word.start : word.end] != word.text:
                raise ValueError(f"word {word!r} does not match span of {self.text!r}")

    @classmethod
    def from_string(cls, text: str) -> Text:
        return cls(text, split_words(text))

    def concat(self, other: Text, sep: str = " ") -> Text:
        """`self + sep + other` with `other`'s word spans shifted."""
        shift = len(self.text) + len(sep)
        moved = tuple(Word(w.text, w.start + shift, w.end + shift, w.boxes) for w in other.words)
        return Text(self.text + sep + other.text, self.words + moved)


@dataclass(frozen=True, slots=True)
class Example:
    """One scored item of a dataset.

    - `id`: a content id, never a row number: VCR `annot_id:qa` / `annot_id:qar`, SNLI-VE
      `pairID`, VQA `question_id` (as a string). Caches and splits are keyed by it.
    - `image_path`: posix path relative to the dataset root (already checked not to escape it).
    - `context`: VCR's question (Q->A) or question + correct answer (QA->R); None elsewhere.
    - `choices`: VCR's 4 answers / rationales; SNLI-VE `(hypothesis,)`; VQA `(question,)`.
    - `texts`: what a model scores, one per choice: context + " " + choice, or the choice alone.
    - `label`: VCR choice index, SNLI-VE class index (see `snli_ve.LABELS`); None when unknown
      (VCR/SNLI-VE test) and for VQA, whose targets are `answer_scores` (soft, 0/.3/.6/.9/1).
    - `group`: examples that are scored jointly (VCR Q2AR joins `qa` and `qar` of one annot_id).
    - `label_free_text`: a text that belongs with the image whatever the labels say (VCR and VQA
      the question, SNLI-VE the premise caption); None when the dataset has none. Adaptive
      finetuning's image-text matching takes its positives from it, never from the choices
      (a wrong VCR answer or a contradicting hypothesis is not true of the image).
    - `raw`: the original record, for reference (not compared, not hashed).
    """

    id: str
    dataset: str
    split: str
    image_id: str
    image_path: str
    choices: tuple[Text, ...]
    label: int | None
    category: str
    context: Text | None = None
    group: str = ""
    meta_path: str | None = None
    answers: tuple[str, ...] = ()
    answer_scores: Mapping[str, float] | None = None
    label_free_text: Text | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def texts(self) -> tuple[Text, ...]:
        if self.context is None:
            return self.choices
        return tuple(self.context.concat(choice) for choice in self.choices)

    @property
    def num_choices(self) -> int:
        return len(self.choices)


def _text(text: Text | None) -> list | None:
    if text is None:
        return None
    return [
        text.text,
        [[w.start, w.end, *([list(w.boxes)] if w.boxes else [])] for w in text.words],
    ]


def _untext(data: list | None) -> Text | None:
    if data is None:
        return None
    text, words = data
    return Text(
        text,
        tuple(
            Word(text[w[0] : w[1]], w[0], w[1], tuple(w[2]) if len(w) > 2 else ()) for w in words
        ),
    )


# (encode, decode) of the fields that are not JSON values as they stand
_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "choices": (lambda texts: [_text(t) for t in texts], lambda data: tuple(map(_untext, data))),
    "context": (_text, _untext),
    "label_free_text": (_text, _untext),
    "answers": (list, tuple),
    "answer_scores": (lambda m: None if m is None else dict(m), lambda data: data),
    "raw": (dict, lambda data: data),
}
_FIELDS = tuple(f.name for f in dataclasses.fields(Example))


def encode_example(example: Example) -> bytes:
    """`example` as one JSON array of its fields (a word as its span in its `Text`);
    `decode_example` gives it back field for field, `raw` included (a reader's `raw` is parsed
    JSON). What keeps a whole split on disk rather than in memory (data/stored.py)."""
    values = []
    for name in _FIELDS:
        value = getattr(example, name)
        values.append(_CODECS[name][0](value) if name in _CODECS else value)
    return json.dumps(values, separators=(",", ":")).encode("ascii")


def decode_example(data: bytes) -> Example:
    """The example `encode_example` wrote."""
    values = json.loads(data)
    return Example(
        *(
            _CODECS[name][1](value) if name in _CODECS else value
            for name, value in zip(_FIELDS, values)
        )
    )


def image_order(examples: list[Example]) -> list[Example]:
    """`examples` grouped by image: images sorted by id, reader order within an image (a stable
    sort). The one order of a whole split: caches store it (so a chunk is whole shards read in
    sequence) and full-split training reads it for every method, with or without a cache, so
    the baseline and the distilling methods see the same batches (docs/training.md)."""
    return sorted(examples, key=lambda ex: ex.image_id)


def without_labels(
    example: Example, *, keep_raw: tuple[str, ...] = (), category: str | None = None
) -> Example:
    """`example` as a label-free stage (adaptive finetuning) may see it: no label, no answer
    scores, no human answers, of the original record only the keys `keep_raw` (a record holds
    its labels and text derived from them: VCR's `answer_orig`, SNLI-VE's `gold_label`, VQA's
    `answers`), and `category` in place of one derived from the label. What it scores is
    unchanged."""
    return dataclasses.replace(
        example,
        label=None,
        answer_scores=None,
        answers=(),
        raw={k: example.raw[k] for k in keep_raw if k in example.raw},
        category=example.category if category is None else category,
    )


@dataclass(frozen=True)
class BadRecord:
    """A record skipped under `--skip-bad`, with where and why (written to a report)."""

    file: str
    line: int | None
    field: str | None
    record_id: str | None
    reason: str


@dataclass
class ReadResult:
    """What a reader returns: the examples, and any records skipped under `skip_bad`."""

    examples: list[Example]
    skipped: list[BadRecord] = field(default_factory=list)
