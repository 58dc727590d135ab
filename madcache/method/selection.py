"""Token selection at load time (MAD.md, "Token selection (TS)"): the top-m words of every
scored text by the cached combined score S_j (or m random words: the ablation control)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from madcache.cache.targets import WordTargets


def top_words(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m highest scores, best first; ties -> lower index; fewer words -> all."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:m]


def random_words(n_words: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """The random-selection ablation control: m distinct word indices drawn uniformly."""
    return torch.randperm(n_words, generator=generator)[:m]


@dataclass
class SelectedWords:
    """Dense per-word teacher targets for the m selected words of every scored text."""

    feat: np.ndarray  # [N, C, m, Dt] float32
    span: np.ndarray  # [N, C, m, 2] int64 (char spans in examples[n].texts[c].text)
    mask: np.ndarray  # [N, C, m] bool


def choose_words(
    words: WordTargets, *, m: int, generator: torch.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token selection (TS) from the cached scores alone (no features needed): per text row the
    top-m words by the combined score S_j (or m random words when `generator` is given: the
    ablation control), as flat word indices `[rows, m]` (0 where `mask` is False) and `mask`.

    Words the teacher truncated are never selected (their feature is incomplete). Top-m picks
    only words with a positive score (stopwords and punctuation score 0, NaN counts as 0), so a
    text with fewer such words gets fewer than m; random selection draws from all usable words.
    """
    rows = len(words.offsets) - 1
    picked = np.zeros((rows, m), dtype=np.int64)
    mask = np.zeros((rows, m), dtype=bool)
    for row in range(rows):
        sl = words.text_slice(row)
        if generator is None:
            scores = np.nan_to_num(words.score[sl], nan=0.0)
            usable = np.flatnonzero(~words.truncated[sl] & (scores > 0))
            chosen = top_words(torch.from_numpy(scores[usable]), m)
        else:
            usable = np.flatnonzero(~words.truncated[sl])
            chosen = random_words(len(usable), m, generator)
        k = len(chosen)
        picked[row, :k] = sl.start + usable[chosen.numpy()]
        mask[row, :k] = True
    return picked, mask


def select_words(
    words: WordTargets,
    *,
    num_examples: int,
    num_choices: int,
    m: int,
    generator: torch.Generator | None = None,
) -> SelectedWords:
    """Token selection (TS), done once at load time: the features and spans of the words
    `choose_words` picks, dense per text row (zeros where fewer than m were picked)."""
    picked, mask = choose_words(words, m=m, generator=generator)
    dim = words.feat.shape[1]
    feat = np.zeros((len(picked), m, dim), dtype=np.float32)
    span = np.zeros((len(picked), m, 2), dtype=np.int64)
    feat[mask] = words.features(picked[mask])
    span[mask] = words.span[picked[mask]]
    shape = (num_examples, num_choices, m)
    return SelectedWords(feat.reshape(*shape, dim), span.reshape(*shape, 2), mask.reshape(shape))
