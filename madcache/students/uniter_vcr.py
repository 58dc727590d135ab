"""UNITER's text input, built as its `data/vcr.py` (VCR) and `data/ve.py` / `data/vqa.py` build it,
from madcache's `Example`s, with each token's character span in `example.texts[c].text`.

VCR (`VcrDataset._get_input_ids`), 4 token types (0 question, 1 region, 2 answer, 3 rationale):

    Q->A:   [CLS] question [SEP] answer_c [SEP]
    types    0    0 ...    2     2 ...    2
    QA->R:  [CLS] question [SEP] answer [SEP] rationale_c [SEP]
    types    0    0 ...    2     2 ...  3     3 ...       3

Object references ("person1": a `Word` whose `boxes` hold object indices) are UNITER's object-tag
special tokens, `base_vocab + index` for index < 81 (the rows `init_word_embedding(81)` appends);
other words are bert-base-cased WordPiece (UNITER tokenises each whitespace word with
`BertTokenizer.tokenize`, which the fast tokenizer reproduces on the whole string). SNLI-VE and
VQA: `[CLS] text [SEP]`, all type 0. A sequence longer than `max_length` keeps its first
`max_length - 1` tokens and its final [SEP] (UNITER drops such examples from training instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from madcache.data.records import Example, Text, Word
from madcache.students.tokens import TOKENIZER_LOCK
from madcache.students.uniter_model import NUM_OBJECT_TAGS

QUESTION, REGION, ANSWER, RATIONALE = 0, 1, 2, 3


@dataclass
class UniterTokens:
    """One example's sequences: `ids[c]`, `types[c]` [L_c] and `spans[c]` [L_c, 2]
    ((-1, -1) for [CLS] / [SEP])."""

    image_id: str
    ids: list[np.ndarray]
    types: list[np.ndarray]
    spans: list[np.ndarray]


def question_words(example: Example) -> int:
    """How many of the context's words are the question (the rest, in QA->R, is the answer).
    Read from the raw VCR record (the renderer does not change the word count)."""
    from madcache.data.vcr import render_tokens

    raw = example.raw or {}
    if "question" in raw and "objects" in raw:
        return len(render_tokens(raw["question"], raw["objects"]).words)
    return len(example.context.words)


def segments(example: Example, choice: Text) -> tuple[Text, list[tuple[int, int, int]]]:
    """The scored text of `choice` and its segments (char start, char end, token type). A context
    is VCR's (`Example.context`: the question, or question + answer in QA->R)."""
    if example.context is None:
        return choice, [(0, len(choice.text), QUESTION)]
    context = example.context
    text = context.concat(choice)
    start = len(context.text) + 1
    n = question_words(example)
    if n >= len(context.words):  # Q->A
        return text, [(0, len(context.text), QUESTION), (start, len(text.text), ANSWER)]
    split = context.words[n].start  # QA->R
    return text, [
        (0, context.words[n - 1].end, QUESTION),
        (split, len(context.text), ANSWER),
        (start, len(text.text), RATIONALE),
    ]


class UniterTextEncoder:
    """Token ids, types and spans of UNITER's input. `tags` = use the object-tag tokens
    (a VCR checkpoint, `base_vocab + 81` rows)."""

    def __init__(self, tokenizer, *, max_length: int, tags: bool) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.tag_base = len(tokenizer) if tags else None

    def _wordpiece(self, text: str, offset: int) -> list[tuple[int, int, int]]:
        if not text.strip():
            return []
        with TOKENIZER_LOCK:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [
            (i, a + offset, b + offset)
            for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
        ]

    def _tag(self, word: Word) -> int | None:
        if self.tag_base is None or len(word.boxes) != 1 or word.boxes[0] >= NUM_OBJECT_TAGS:
            return None
        return self.tag_base + word.boxes[0]

    def segment(self, text: Text, start: int, end: int) -> list[tuple[int, int, int]]:
        """(id, char start, char end) of text[start:end]: object references as tags, the rest
        WordPiece."""
        out, cursor = [], start
        for word in text.words:
            tag = self._tag(word) if start <= word.start and word.end <= end else None
            if tag is None:
                continue
            out += self._wordpiece(text.text[cursor : word.start], cursor)
            out.append((tag, word.start, word.end))
            cursor = word.end
        return out + self._wordpiece(text.text[cursor:end], cursor)

    def sequence(
        self, text: Text, parts: Sequence[tuple[int, int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[CLS] part_0 [SEP] part_1 ... [SEP]: each [SEP] takes the type of the part after
        it (the last one its part's), [CLS] type 0 (data/vcr.py)."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows = [(cls_id, QUESTION, -1, -1)]
        for k, (start, end, kind) in enumerate(parts):
            if k:
                rows.append((sep_id, kind, -1, -1))
            rows += [(i, kind, a, b) for i, a, b in self.segment(text, start, end)]
        if len(rows) >= self.max_length:
            rows = rows[: self.max_length - 1]
        rows.append((sep_id, parts[-1][2], -1, -1))
        table = np.asarray(rows, dtype=np.int64)
        return table[:, 0], table[:, 1], table[:, 2:]

    def example(self, example: Example) -> UniterTokens:
        ids, types, spans = [], [], []
        for choice in example.choices:
            text, parts = segments(example, choice)
            i, t, s = self.sequence(text, parts)
            ids.append(i), types.append(t), spans.append(s)
        return UniterTokens(example.image_id, ids, types, spans)

    def texts(self, texts: Sequence[Text]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Single texts (ITM's label-free texts): [CLS] text [SEP], type 0."""
        return [self.sequence(t, [(0, len(t.text), QUESTION)]) for t in texts]


def pad(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], pad_id: int
) -> dict[str, np.ndarray]:
    """Sequences (ids, types, spans) -> padded arrays (padding: id `pad_id`, type 0, span -1)."""
    length = max(len(ids) for ids, _, _ in rows)
    out = {
        "input_ids": np.full((len(rows), length), pad_id, np.int64),
        "token_types": np.zeros((len(rows), length), np.int64),
        "attention_mask": np.zeros((len(rows), length), bool),
        "token_spans": np.full((len(rows), length, 2), -1, np.int64),
    }
    for n, (ids, types, spans) in enumerate(rows):
        out["input_ids"][n, : len(ids)] = ids
        out["token_types"][n, : len(ids)] = types
        out["attention_mask"][n, : len(ids)] = True
        out["token_spans"][n, : len(ids)] = spans
    return out
