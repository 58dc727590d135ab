"""Token-selection scores (MAD.md, "Token selection (TS)"), computed once at extraction.

S_j = S_vr / |S_vr|_1 + S_si / |S_si|_1 per word over the text's *content* words; stopwords (YAKE's
own list for the language) and punctuation-only words get S_si = 0 and S_j = 0, so the top-m
words are content words (the paper's Fig. 4 moves emphasis from "is" to "sending", "telegram";
YAKE would otherwise pass a keyword's score to the "is" inside "dress is red"). Extraction stores
`vr` (the raw cosine), `yake` and the combined score per word. Picking the top m words happens at
load time (`madcache.method.selection`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from madcache.data.records import Text, split_words


def visual_relevance(image_embedding: torch.Tensor, word_features: torch.Tensor) -> torch.Tensor:
    """S_vr[l] = cos(V_t, f(w_l)) for each word feature row. Returns [W] (may be negative)."""
    if word_features.shape[0] == 0:
        return word_features.new_zeros(0)
    return torch.nn.functional.cosine_similarity(
        word_features.float(), image_embedding.float().unsqueeze(0), dim=-1
    )


def combine_scores(
    vr: torch.Tensor, si: torch.Tensor, content: torch.Tensor | None = None
) -> torch.Tensor:
    """S_j: negative `vr` clipped to 0, words outside `content` (a bool mask; None = all) set to
    0, each vector divided by its L1 norm (all-zero stays zero), summed."""
    keep = torch.ones_like(vr, dtype=torch.bool) if content is None else content.bool()
    vr, si = vr.float().clamp(min=0) * keep, si.float().clamp(min=0) * keep
    return _l1_normalise(vr) + _l1_normalise(si)


def _l1_normalise(x: torch.Tensor) -> torch.Tensor:
    norm = x.abs().sum()
    return x / norm if norm > 0 else x


@lru_cache(maxsize=8)
def _yake_extractor(language: str, max_ngram: int, top: int):
    import yake

    return yake.KeywordExtractor(lan=language, n=max_ngram, top=top)


def content_words(text: Text, language: str = "en") -> np.ndarray:
    """[W] bool: the words token selection may pick. False for stopwords (YAKE's own stopword
    list of `language`, compared lower-cased) and for words without a letter or digit.
    Memoised per process, as `yake_word_scores` (which masks with it) is."""
    return np.array(_content_words(text, language), dtype=bool)


@lru_cache(maxsize=65_536)
def _content_words(text: Text, language: str) -> tuple[bool, ...]:
    stopwords = _yake_extractor(language, 3, 20).stopword_set
    return tuple(
        any(c.isalnum() for c in w.text) and w.text.lower() not in stopwords for w in text.words
    )


def yake_word_scores(
    text: Text, *, max_ngram: int = 3, top: int = 20, language: str = "en"
) -> np.ndarray:
    """S_si per word: YAKE keyword scores (lower = more important) mapped to 1 / (1 + score);
    each word takes the max over the keywords that contain it; words in no keyword, stopwords
    and punctuation (`content_words`) get 0.

    Memoised per process: YAKE is the costliest CPU step of extraction and datasets repeat texts
    (VCR answers under many images, SNLI-VE hypotheses)."""
    return np.array(_yake_word_scores(text, max_ngram, top, language), dtype=np.float32)


@lru_cache(maxsize=65_536)
def _yake_word_scores(text: Text, max_ngram: int, top: int, language: str) -> tuple[float, ...]:
    scores = np.zeros(len(text.words), dtype=np.float32)
    if not text.words:
        return ()
    lowered = [w.text.lower() for w in text.words]
    for keyword, raw in _yake_extractor(language, max_ngram, top).extract_keywords(text.text):
        value = 1.0 / (1.0 + float(raw))
        parts = [w.text.lower() for w in split_words(keyword)]
        for start in _occurrences(lowered, parts):
            span = slice(start, start + len(parts))
            scores[span] = np.maximum(scores[span], value)
    return tuple((scores * content_words(text, language)).tolist())


def _occurrences(words: list[str], parts: list[str]) -> list[int]:
    n = len(parts)
    if n == 0:
        return []
    return [i for i in range(len(words) - n + 1) if words[i : i + n] == parts]
