"""Token-selection scores (MAD.md, "Token selection (TS)"), computed once at extraction.

S_j = S_vr / |S_vr|_1 + S_si / |S_si|_1 per word; extraction stores `vr`, `yake` and the combined
score per word in the cache. Picking the top m words happens at load time
(`madcache.method.selection`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from madcache.data.records import Text
from madcache.data.records import split_words


def visual_relevance(image_embedding: torch.Tensor, word_features: torch.Tensor) -> torch.Tensor:
    """S_vr[l] = cos(V_t, f(w_l)) for each word feature row. Returns [W] (may be negative)."""
    if word_features.shape[0] == 0:
        return word_features.new_zeros(0)
    return torch.nn.functional.cosine_similarity(
        word_features.float(), image_embedding.float().unsqueeze(0), dim=-1)


def combine_scores(vr: torch.Tensor, si: torch.Tensor) -> torch.Tensor:
    """Negative `vr` clipped to 0, each vector divided by its L1 norm (all-zero stays zero), summed."""
    return _l1_normalise(vr.float().clamp(min=0)) + _l1_normalise(si.float().clamp(min=0))


def _l1_normalise(x: torch.Tensor) -> torch.Tensor:
    norm = x.abs().sum()
    return x / norm if norm > 0 else x


@lru_cache(maxsize=8)
def _yake_extractor(language: str, max_ngram: int, top: int):
    import yake

    return yake.KeywordExtractor(lan=language, n=max_ngram, top=top)


def yake_word_scores(text: Text, *, max_ngram: int = 3, top: int = 20,
                     language: str = "en") -> np.ndarray:
    """S_si per word: YAKE keyword scores (lower = more important) mapped to 1 / (1 + score);
    each word takes the max over the keywords that contain it; words in no keyword get 0.

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
    return tuple(scores.tolist())


def _occurrences(words: list[str], parts: list[str]) -> list[int]:
    n = len(parts)
    if n == 0:
        return []
    return [i for i in range(len(words) - n + 1) if words[i:i + n] == parts]
