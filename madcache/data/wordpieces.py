"""Texts tokenised word by word (the dataset layer's words), so every token knows its word:
the `TokenBatch` a teacher's text processor returns, `word_piece_batch` (any tokenizer's pieces
of one word), `WordTokenizer` (open_clip's BPE word by word) and `HFWordPieces` (a transformers
tokenizer directory's, word by word).

Shared by the open_clip teacher (teachers/clip.py) and the `clip-finetune` student
(students/clip_finetune.py), which must tokenise exactly as the teacher did to score, at step 0,
exactly what the teacher scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from madcache.core.errors import ConfigError
from madcache.data.records import Text


@dataclass
class TokenBatch:
    """Tokenised texts. `token_word[b, l]` is the word index of token l (-1: special/padding)."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long/bool
    token_word: torch.Tensor  # [B, L] long
    n_words: list[int]  # words per text (the dataset layer's words)
    truncated: torch.Tensor  # [B] bool: the text did not fit the context length
    extra: dict[str, Any] = field(default_factory=dict)


def word_piece_batch(
    texts: Sequence[Text],
    pieces_of: Callable[[str], Sequence[int]],
    *,
    prefix: Sequence[int],
    suffix: Sequence[int],
    length: int,
    pad_id: int,
    pad_to_length: bool,
) -> TokenBatch:
    """Texts tokenised word by word (the dataset layer's words), so every token knows its word:
    `prefix` + the pieces of each word + `suffix`. A row longer than `length` keeps its first
    `length - len(suffix)` tokens, then the suffix (open_clip's truncation: EOT stays last); the
    words that lost a token are flagged. Rows are padded with `pad_id` to `length`
    (`pad_to_length`) or to the longest row; `attention_mask` marks the real tokens."""
    rows, owners, cuts = [], [], []
    truncated = torch.zeros(len(texts), dtype=torch.bool)
    for b, text in enumerate(texts):
        row, words = list(prefix), [-1] * len(prefix)
        for i, word in enumerate(text.words):
            pieces = list(pieces_of(word.text))
            row += pieces
            words += [i] * len(pieces)
        cut = torch.zeros(len(text.words), dtype=torch.bool)
        if len(row) + len(suffix) > length:
            keep = length - len(suffix)
            cut[[w for w in words[keep:] if w >= 0]] = True
            row, words = row[:keep], words[:keep]
            truncated[b] = True
        rows.append(row + list(suffix))
        owners.append(words + [-1] * len(suffix))
        cuts.append(cut)
    width = length if pad_to_length else max((len(r) for r in rows), default=0)
    ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    owner = torch.full((len(texts), width), -1, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for b, (row, words) in enumerate(zip(rows, owners)):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        owner[b, : len(row)] = torch.tensor(words, dtype=torch.long)
        mask[b, : len(row)] = 1
    return TokenBatch(
        input_ids=ids,
        attention_mask=mask,
        token_word=owner,
        n_words=[len(t.words) for t in texts],
        truncated=truncated,
        extra={"word_truncated": cuts},
    )


@lru_cache(maxsize=4)
def _simple_tokenizer(kwargs: tuple[tuple[str, Any], ...]):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(**dict(kwargs))


@lru_cache(maxsize=262_144)
def _word_pieces(tokenizer_kwargs: tuple, word: str) -> tuple[int, ...]:
    """BPE ids of one word, memoised per process: datasets repeat words endlessly, and open_clip's
    text cleaning (ftfy) dominated extraction's CPU time when run on every occurrence."""
    return tuple(_simple_tokenizer(tokenizer_kwargs).encode(word))


class WordTokenizer:
    """Texts -> `TokenBatch`, word by word with open_clip's BPE. Picklable (no vocab inside:
    each process builds the tokenizer once)."""

    def __init__(self, context_length: int, tokenizer_kwargs: dict[str, Any] | None = None):
        self.context_length = context_length
        self.tokenizer_kwargs = tuple(sorted((tokenizer_kwargs or {}).items()))

    def __call__(self, texts: Sequence[Text]) -> TokenBatch:
        tok = _simple_tokenizer(self.tokenizer_kwargs)
        return word_piece_batch(
            texts,
            lambda word: _word_pieces(self.tokenizer_kwargs, word),
            prefix=[tok.sot_token_id],
            suffix=[tok.eot_token_id],
            length=self.context_length,
            pad_id=0,
            pad_to_length=True,
        )


# --- a transformers tokenizer (CLIP's byte-level BPE, SigLIP's SentencePiece) ---------------

PROBE = "a"


@lru_cache(maxsize=4)
def hf_tokenizer(path: str):
    """The directory's tokenizer, fast or not (SigLIP's is SentencePiece, slow only)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(
            f"{path}: cannot load its tokenizer ({str(exc).splitlines()[0]}); a "
            "SigLIP directory needs `pip install madcache[siglip]` "
            "(sentencepiece)"
        ) from None


@lru_cache(maxsize=262_144)
def _pieces(path: str, word: str) -> tuple[int, ...]:
    return tuple(hf_tokenizer(path)(word, add_special_tokens=False)["input_ids"])


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the special token ids the tokenizer puts around a text."""
    full = list(tokenizer(PROBE)["input_ids"])
    core = list(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(core) + 1):
        if full[start : start + len(core)] == core:
            return full[:start], full[start + len(core) :]
    raise ConfigError(f"cannot find the special tokens of {type(tokenizer).__name__}")


class HFWordPieces:
    """Texts -> `TokenBatch` word by word with a directory's tokenizer. Picklable (the
    tokenizer is loaded once per process)."""

    def __init__(self, path: str | Path, length: int, pad_to_length: bool) -> None:
        self.path = str(path)
        self.length = length
        self.pad_to_length = pad_to_length

    def __call__(self, texts: Sequence[Text]) -> TokenBatch:
        tok = hf_tokenizer(self.path)
        prefix, suffix = special_tokens(tok)
        return word_piece_batch(
            texts,
            lambda word: _pieces(self.path, word),
            prefix=prefix,
            suffix=suffix,
            length=self.length,
            pad_id=int(tok.pad_token_id),
            pad_to_length=self.pad_to_length,
        )
