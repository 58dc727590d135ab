"""The in-memory teacher targets a trainer loads for a set of examples (one pass over the cache).

This is the whole interface between the cache and the trainer: `Cache.load_targets(ids)` returns a
`Targets`, rows in the order of `ids`. Texts are per (example, choice): text row `n * C + c` is
`examples[n].texts[c]`. Per-word arrays are ragged: flat arrays + offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class WordTargets:
    offsets: np.ndarray  # [N*C + 1] int64: words of text row r are flat[offsets[r]:offsets[r+1]]
    feat: np.ndarray  # [T, Dt] float32: teacher word features (mean of sub-tokens)
    span: np.ndarray  # [T, 2] int32: char spans in examples[n].texts[c].text
    # vr and yake: NaN when unavailable, and when the load had `needs` (token selection ranks
    # by `score` alone, so a method's load does not read the two scores it combines)
    vr: np.ndarray  # [T] float32: visual relevance cos(V_t, word feature)
    yake: np.ndarray  # [T] float32: 1 / (1 + YAKE score), max over containing keywords
    score: np.ndarray  # [T] float32: combine_scores(vr, yake) per text
    truncated: np.ndarray  # [T] bool: the word fell (partly) beyond the teacher's context
    # None: `feat` holds every word's features. Else the sorted flat word indices whose features
    # `feat` holds, one row each (`load_targets(..., choose_words=)` read only those).
    feat_rows: np.ndarray | None = None

    def text_slice(self, row: int) -> slice:
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def features(self, words: np.ndarray) -> np.ndarray:
        """The features of the flat word indices `words` (each must have been read)."""
        words = np.asarray(words, dtype=np.int64)
        if self.feat_rows is None:
            return self.feat[words]
        at = np.searchsorted(self.feat_rows, words)
        if len(words) and (
            at.max() >= len(self.feat_rows) or not np.array_equal(self.feat_rows[at], words)
        ):
            raise KeyError("features of words that were not read (not chosen at load time)")
        return self.feat[at]


@dataclass
class Targets:
    """Teacher targets, rows aligned with `example_ids`. A field is None when the cache lacks it
    (e.g. no vision teacher); `MissingTargetError` is raised by methods that need it."""

    example_ids: list[str]
    num_choices: int  # C: texts per example (VCR 4, SNLI-VE 1, VQA 1)
    image: np.ndarray | None  # [N, Dv] float32: V_t
    text_eos: np.ndarray | None  # [N, C, Dt] float32: T_t per scored text
    words: WordTargets | None  # per-word targets of the N*C scored texts
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    """Teacher logits over each example's candidates, by prompt/protocol name: VCR 'iqa' / 'ia'
    [N, 4]; SNLI-VE 'kmeans' [N, 3]; VQA 'template' [N, K] over `candidates`."""
    candidates: np.ndarray | None = None  # [N, K] int64 VQA answer-vocab ids of the logits
    default_logits: str | None = None  # the logits used for confidence weighting

    def row_of(self) -> dict[str, int]:
        return {eid: i for i, eid in enumerate(self.example_ids)}


def kmeans_logits(similarity: np.ndarray, centres: np.ndarray, scale: float) -> np.ndarray:
    """SNLI-VE's k-means logits (MAD.md): -scale |similarity - centre_k| for every centre,
    [..., k], ordered like `centres` (entailment, neutral, contradiction).

    `scale` is CLIP's logit scale (100, as for the VCR and VQA logits): cosines of one split lie
    within a few hundredths of each other, so on the raw scale the softmax stays near uniform
    and confidence weighting (r > 1) would almost never fire."""
    similarity = np.asarray(similarity, dtype=np.float32)
    return -scale * np.abs(similarity[..., None] - np.asarray(centres, dtype=np.float32))
