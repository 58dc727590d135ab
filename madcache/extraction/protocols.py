"""Teacher-logit protocols (MAD.md, "Teacher logits"): how a joint-space teacher scores the
candidates of an example, for confidence weighting and zero-shot evaluation, and the per-dataset
`LogitProtocol` objects extraction runs.

- VCR: `iqa` scores question + answer texts (`example.texts`), `ia` the answers alone
  (`example.choices`); logit = s * cos(image, text) + b with the relevance model's own logit
  scale s (100 for OpenAI CLIP) and bias b (SigLIP; 0 for CLIP): `with_logit_scale`.
- SNLI-VE: cos(image, hypothesis); 1-D k-means (k = 3) over a whole split's similarities, no
  labels; centres sorted high -> low = entailment, neutral, contradiction; the cache reader derives
  logit = -100 |sim - centre| (`madcache.cache.targets.kmeans_logits`: CLIP's logit scale, like
  the other logits, so confidence weighting can fire).
- VQA: each candidate answer turned into a statement with the question by `TEMPLATES`;
  candidates prefiltered by a sentence encoder (`prefilter_answers`); logit = s * cos + b.

A task adds relevance-only prompt texts to a shard plan (`prepare`), turns the relevance model's
embeddings into per-example arrays (`score`), and may need the whole split afterwards
(`finish`: SNLI-VE's k-means anchors). All logits come from the relevance model.

The texts each protocol scores (VCR prompts, VQA `TEMPLATES`) and the scaled cosine live in
`madcache.data.prompts`, the one implementation the `clip-finetune` student scores with too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from madcache.core.registry import Registry
from madcache.data.prompts import (
    LOGIT_SCALE,
    SNLI_VE_ORDER,
    TEMPLATES,
    VCR_PROTOCOLS,
    cosine_logits,
    statement_texts,
    vcr_texts,
    vqa_question,
)
from madcache.extraction.plan import ShardPlan, unique_texts

if TYPE_CHECKING:
    from madcache.teachers.sentence import SentenceEncoder


# --- VCR -----------------------------------------------------------------------------------


def vcr_logits(image_emb: torch.Tensor, text_embs: torch.Tensor) -> torch.Tensor:
    """100 * cos(image, text_i) over the candidates (MAD.md, VCR Q->A and QA->R)."""
    return cosine_logits(image_emb, text_embs)


# --- SNLI-VE -------------------------------------------------------------------------------


def kmeans_anchors(
    similarities: np.ndarray, k: int = 3, seed: int = 0, max_iter: int = 300
) -> np.ndarray:
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


# --- VQA -----------------------------------------------------------------------------------


def prefilter_answers(
    questions: list[str], vocab: list[str], encoder: SentenceEncoder, k: int = 10, chunk: int = 1024
) -> np.ndarray:
    """[Q, k] answer-vocabulary ids ranked by the cosine between question and answer sentence
    embeddings (best first; ties -> lower id). Questions are encoded and scored in chunks."""
    k = min(k, len(vocab))
    answers = encoder.encode(list(vocab))
    out = np.zeros((len(questions), k), dtype=np.int64)
    for i in range(0, len(questions), chunk):
        sims = (encoder.encode(list(questions[i : i + chunk])) @ answers.T).numpy()
        out[i : i + chunk] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out


# --- extraction tasks ----------------------------------------------------------------------


@dataclass
class RelevanceFeatures:
    """The relevance model's float32 embeddings for one shard."""

    image: torch.Tensor  # [n_img, D]
    text_eos: torch.Tensor  # [n_unique_texts, D] (plan.texts)
    aux_eos: torch.Tensor | None = None  # [n_aux, D] (plan.aux_texts)


class LogitProtocol:
    """No teacher logits (a dataset without a protocol).

    `default_logits` names the logits confidence weighting uses unless `--default-logits` says
    otherwise (the manifest's `default_logits`; "" for none)."""

    arrays: tuple[str, ...] = ()  # per-example arrays that need the relevance model
    logit_names: tuple[str, ...] = ()
    default_logits: ClassVar[str] = ""
    logit_scale: float = LOGIT_SCALE  # the relevance model's (`with_logit_scale`)
    logit_bias: float = 0.0

    def logits(self, image: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """`logit_scale * cos(image, text_c) + logit_bias` over the candidates."""
        return cosine_logits(image, texts, scale=self.logit_scale) + self.logit_bias

    def scale_settings(self) -> dict[str, float]:
        return {"scale": self.logit_scale, "bias": self.logit_bias}

    def prepare(self, plan: ShardPlan) -> None:
        """Add prompt texts (`plan.aux_texts`, `plan.example_aux`) and up-front arrays."""

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        return {}

    def finish(self, shard_arrays: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        """Split-level results for the manifest's `extra` (from every shard's task arrays)."""
        return {}

    def settings(self) -> dict[str, Any]:
        return {"logits": list(self.logit_names)}


def _example_image(plan: ShardPlan, rel: RelevanceFeatures) -> torch.Tensor:
    return rel.image[torch.as_tensor(plan.example_image)]


def _scored_eos(plan: ShardPlan, rel: RelevanceFeatures) -> torch.Tensor:
    """[n_ex, C, D]: the relevance embedding of each example's scored texts."""
    unique = plan.text_rows[plan.example_texts, 1]
    return rel.text_eos[torch.as_tensor(unique)]


def _aux_eos(plan: ShardPlan, rel: RelevanceFeatures) -> torch.Tensor:
    return rel.aux_eos[torch.as_tensor(plan.example_aux)]


class VcrProtocol(LogitProtocol):
    """`iqa`: 100 cos(image, question + choice); `ia`: 100 cos(image, choice alone)."""

    arrays = ("logits/iqa", "logits/ia")
    logit_names = VCR_PROTOCOLS
    # the answer-only prompt scored best zero-shot in the paper (54.82 vs 50.27 for iqa)
    default_logits = "ia"

    def prepare(self, plan: ShardPlan) -> None:
        plan.aux_texts, plan.example_aux = unique_texts(
            [list(vcr_texts(ex, "ia")) for ex in plan.examples]
        )

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        image = _example_image(plan, rel)
        return {
            "logits/iqa": self.logits(image, _scored_eos(plan, rel)).numpy(),
            "logits/ia": self.logits(image, _aux_eos(plan, rel)).numpy(),
        }

    def settings(self) -> dict[str, Any]:
        return {"logits": list(self.logit_names), **self.scale_settings()}


class SnliVeProtocol(LogitProtocol):
    """`similarity` = cos(image, hypothesis); k-means centres over the whole split at the end."""

    arrays = ("similarity",)
    logit_names = ("kmeans",)
    default_logits = "kmeans"
    k = 3

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        image = _example_image(plan, rel)
        hypothesis = _scored_eos(plan, rel)[:, 0]
        return {
            "similarity": cosine_logits(image, hypothesis.unsqueeze(1), scale=1.0)[:, 0].numpy()
        }

    def finish(self, shard_arrays: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        values = [a["similarity"] for a in shard_arrays if "similarity" in a]
        if not values:
            return {}
        similarities = np.concatenate(values)
        if similarities.size < self.k:
            return {}
        centres = kmeans_anchors(similarities, k=self.k)
        return {
            "kmeans_centres": [float(c) for c in centres],
            "kmeans_order": list(SNLI_VE_ORDER),
            "kmeans_scale": self.logit_scale,
        }

    def settings(self) -> dict[str, Any]:
        return {
            "logits": ["kmeans"],
            "similarity": "cos(image, hypothesis)",
            "kmeans_k": self.k,
            "kmeans_logits": "-scale * |similarity - centre_k|",
            "scale": self.logit_scale,
        }


@dataclass
class VqaProtocol(LogitProtocol):
    """Top-k answers by sentence similarity to the question; `template` = 100 cos(image,
    statement(question, answer_k)) over those `candidates` (ids into `vocab`)."""

    vocab: list[str]
    vocab_source: str
    encoder: Any  # SentenceEncoder-like: .encode(list[str]) -> [N, D]
    encoder_fingerprint: dict[str, Any]
    top_k: int = 10
    arrays: tuple[str, ...] = ("logits/template", "candidates")
    logit_names: tuple[str, ...] = ("template",)
    default_logits: ClassVar[str] = "template"
    _vocab_emb: torch.Tensor | None = field(default=None, repr=False)

    def prepare(self, plan: ShardPlan) -> None:
        questions = [vqa_question(ex) for ex in plan.examples]
        candidates = prefilter_answers(questions, self.vocab, _VocabCache(self), k=self.top_k)
        statements = [
            statement_texts(q, [self.vocab[a] for a in row])
            for q, row in zip(questions, candidates)
        ]
        plan.aux_texts, plan.example_aux = unique_texts(statements)
        plan.arrays["candidates"] = candidates.astype(np.int64)

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        image = _example_image(plan, rel)
        return {"logits/template": self.logits(image, _aux_eos(plan, rel)).numpy()}

    def settings(self) -> dict[str, Any]:
        return {
            "logits": ["template"],
            **self.scale_settings(),
            "top_k": self.top_k,
            "answer_vocab": {
                "source": self.vocab_source,
                "size": len(self.vocab),
                "sha256": _digest(self.vocab),
            },
            "sentence_encoder": self.encoder_fingerprint,
            "templates": [[name, pattern.pattern] for name, pattern, _ in TEMPLATES],
        }


class _VocabCache:
    """Wraps the sentence encoder so the answer vocabulary is embedded once per run."""

    def __init__(self, task: VqaProtocol) -> None:
        self.task = task

    def encode(self, sentences: list[str]) -> torch.Tensor:
        if sentences == self.task.vocab:
            if self.task._vocab_emb is None:
                self.task._vocab_emb = self.task.encoder.encode(sentences)
            return self.task._vocab_emb
        return self.task.encoder.encode(sentences)


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def with_logit_scale(task: LogitProtocol, teacher: Any) -> LogitProtocol:
    """`task` scoring with the relevance model's own logit scale and bias (`teacher.logit_scale`,
    `teacher.logit_bias`; a teacher without them keeps CLIP's 100 and no bias)."""
    task.logit_scale = float(getattr(teacher, "logit_scale", LOGIT_SCALE))
    task.logit_bias = float(getattr(teacher, "logit_bias", 0.0))
    return task


# The teacher-logit protocols a dataset spec names (`Dataset.teacher_logits`), or `--protocol`.
PROTOCOLS: Registry[type[LogitProtocol]] = Registry("teacher-logit protocol")
PROTOCOLS.register("none", LogitProtocol)
PROTOCOLS.register("vcr", VcrProtocol)
PROTOCOLS.register("snli-ve", SnliVeProtocol)
PROTOCOLS.register("vqa", VqaProtocol)


def make_protocol(protocol: str) -> LogitProtocol:
    """The task of a protocol that needs no extra inputs. VQA's needs an answer vocabulary and
    a sentence encoder (`extraction.run` builds it); asked for here, without a relevance model,
    it is the task without logits."""
    task = PROTOCOLS.get(protocol)
    return LogitProtocol() if task is VqaProtocol else task()
