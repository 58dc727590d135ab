"""Teacher-logit protocols (MAD.md, "Teacher logits"): how a joint-space teacher scores the
candidates of an example, for confidence weighting and zero-shot evaluation.

- VCR: `iqa` scores question + answer texts (`example.texts`), `ia` the answers alone
  (`example.choices`); logit = 100 * cos(image, text) (CLIP's logit scale).
- SNLI-VE: cos(image, hypothesis); 1-D k-means (k = 3) over a whole split's similarities, no
  labels; centres sorted high -> low = entailment, neutral, contradiction; logit = -|sim - centre|.
- VQA: each candidate answer turned into a statement with the question by `TEMPLATES`;
  candidates prefiltered by a sentence encoder (`prefilter_answers`); logit = 100 * cos.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from madcache.data.records import Example, Text

if TYPE_CHECKING:
    from madcache.teachers.sentence import SentenceEncoder

LOGIT_SCALE = 100.0
VCR_PROTOCOLS = ("iqa", "ia")
SNLI_VE_ORDER = ("entailment", "neutral", "contradiction")


def cosine_logits(image_emb: torch.Tensor, text_embs: torch.Tensor,
                  scale: float = LOGIT_SCALE) -> torch.Tensor:
    """`scale * cos(image, text_c)`: image [D] / [B, D], texts [C, D] / [B, C, D] -> [C] / [B, C]."""
    image = torch.nn.functional.normalize(image_emb.float(), dim=-1).unsqueeze(-2)
    texts = torch.nn.functional.normalize(text_embs.float(), dim=-1)
    return scale * (image * texts).sum(-1)


# --- VCR -----------------------------------------------------------------------------------

def vcr_texts(example: Example, protocol: str) -> tuple[Text, ...]:
    """The texts a teacher encodes for one VCR example: `iqa` = context + choice, `ia` = choice."""
    if protocol == "iqa":
        return example.texts
    if protocol == "ia":
        return example.choices
    raise ValueError(f"unknown VCR protocol {protocol!r}; use one of {VCR_PROTOCOLS}")


def vcr_logits(image_emb: torch.Tensor, text_embs: torch.Tensor) -> torch.Tensor:
    """100 * cos(image, text_i) over the candidates (MAD.md, VCR Q->A and QA->R)."""
    return cosine_logits(image_emb, text_embs)


# --- SNLI-VE -------------------------------------------------------------------------------

def kmeans_anchors(similarities: np.ndarray, k: int = 3, seed: int = 0,
                   max_iter: int = 300) -> np.ndarray:
    """1-D k-means on a split's image-hypothesis cosines; centres sorted descending
    (entailment, neutral, contradiction for k = 3).

    Deterministic: centres start at the (i + 0.5) / k quantiles; `seed` only picks the point
    that re-seeds a cluster left empty.
    """
    x = np.asarray(similarities, dtype=np.float64).ravel()
    if x.size < k:
        raise ValueError(f"k-means needs at least k={k} similarities, got {x.size}")
    rng = np.random.default_rng(seed)
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(max_iter):
        assign = np.abs(x[:, None] - centres[None, :]).argmin(1)
        new = centres.copy()
        for c in range(k):
            members = x[assign == c]
            new[c] = members.mean() if members.size else x[rng.integers(x.size)]
        if np.allclose(new, centres, rtol=0, atol=1e-12):
            break
        centres = new
    return np.sort(centres)[::-1].copy()


def anchor_logits(similarity: np.ndarray | float, centres: np.ndarray) -> np.ndarray:
    """-|sim - centre_k| for every centre: [..., k], ordered like `centres`."""
    return -np.abs(np.asarray(similarity, dtype=np.float64)[..., None] - np.asarray(centres))


# --- VQA -----------------------------------------------------------------------------------

YES = {"yes", "yeah", "yep", "true"}

StatementFn = Callable[[re.Match, str], str]


def _yes(answer: str) -> bool:
    return answer.strip().lower() in YES


def _exist(m: re.Match, a: str) -> str:
    verb, rest = m["verb"], m["rest"]
    return f"there {verb} {re.sub(r'^any ', '', rest)}" if _yes(a) else f"there {verb} no {_drop_article(rest)}"


def _this_is(m: re.Match, a: str) -> str:
    return f"{m['subj']} is {m['rest']}" if _yes(a) else f"{m['subj']} is not {m['rest']}"


def _drop_article(phrase: str) -> str:
    return re.sub(r"^(a|an|any|the)\s+", "", phrase)


# (name, pattern on the lower-cased question without "?", statement from match + answer).
# First match wins; no match -> "question answer".
TEMPLATES: tuple[tuple[str, re.Pattern, StatementFn], ...] = tuple(
    (name, re.compile(pattern), fn) for name, pattern, fn in [
        ("color", r"^what colou?r (?P<verb>is|are) (?P<subj>.+)$",
         lambda m, a: f"{m['subj']} {m['verb']} {a}"),
        ("count", r"^how many (?P<subj>.+?)(?: (?:are|is) (?:there|in|on|shown|visible).*"
                  r"| do you see.*| can you see.*)?$",
         lambda m, a: f"there are {a} {m['subj']}"),
        ("exist", r"^(?P<verb>is|are) there (?P<rest>.+)$", _exist),
        ("this-is", r"^is (?P<subj>this|that|it) (?P<rest>.+)$", _this_is),
        ("doing", r"^what (?:is|are) (?P<subj>.+?) doing$", lambda m, a: f"{m['subj']} is {a}"),
        ("kind", r"^what (?:kind|type|sort) of (?P<what>.+?) (?:is|are) (?P<rest>.+)$",
         lambda m, a: f"{m['rest']} is a {a} {m['what']}"),
        ("what-is-this", r"^what (?:is|are) (?P<subj>this|that|these|those|it)$",
         lambda m, a: f"{m['subj']} is {a}"),
        ("where", r"^where (?:is|are) (?P<subj>.+)$", lambda m, a: f"{m['subj']} is in {a}"),
    ])


def question_to_statement(question: str, answer: str) -> str:
    """A declarative statement for (question, candidate answer) by the first matching template
    in `TEMPLATES`, e.g. ("What color is the bus?", "red") -> "the bus is red"; a question no
    template matches becomes "question answer"."""
    q = " ".join(question.strip().lower().rstrip("?").split())
    a = " ".join(answer.strip().split())
    for _, pattern, fn in TEMPLATES:
        m = pattern.match(q)
        if m:
            return fn(m, a)
    return f"{question.strip()} {a}"


def prefilter_answers(questions: list[str], vocab: list[str], encoder: "SentenceEncoder",
                      k: int = 10, chunk: int = 1024) -> np.ndarray:
    """[Q, k] answer-vocabulary ids ranked by the cosine between question and answer sentence
    embeddings (best first; ties -> lower id). Questions are encoded and scored in chunks."""
    k = min(k, len(vocab))
    answers = encoder.encode(list(vocab))
    out = np.zeros((len(questions), k), dtype=np.int64)
    for i in range(0, len(questions), chunk):
        sims = (encoder.encode(list(questions[i:i + chunk])) @ answers.T).numpy()
        out[i:i + chunk] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out
