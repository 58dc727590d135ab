"""Per-dataset teacher-logit protocols at extraction time (MAD.md, "Teacher logits").

A task adds relevance-only prompt texts to a shard plan (`prepare`), turns the relevance model's
embeddings into per-example arrays (`score`), and may need the whole split afterwards
(`finish`: SNLI-VE's k-means anchors). All logits come from the relevance model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madcache import prompts
from madcache.data.records import Example, Text
from madcache.errors import ConfigError
from madcache.extraction.plan import ShardPlan, unique_texts


@dataclass
class RelevanceFeatures:
    """The relevance model's float32 embeddings for one shard."""

    image: torch.Tensor                  # [n_img, D]
    text_eos: torch.Tensor               # [n_unique_texts, D] (plan.texts)
    aux_eos: torch.Tensor | None = None  # [n_aux, D] (plan.aux_texts)


class Task:
    """No teacher logits (a dataset without a protocol)."""

    arrays: tuple[str, ...] = ()         # per-example arrays that need the relevance model
    logit_names: tuple[str, ...] = ()

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


class VcrTask(Task):
    """`iqa`: 100 cos(image, question + choice); `ia`: 100 cos(image, choice alone)."""

    arrays = ("logits/iqa", "logits/ia")
    logit_names = prompts.VCR_PROTOCOLS

    def prepare(self, plan: ShardPlan) -> None:
        plan.aux_texts, plan.example_aux = unique_texts(
            [list(prompts.vcr_texts(ex, "ia")) for ex in plan.examples])

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        image = _example_image(plan, rel)
        return {"logits/iqa": prompts.vcr_logits(image, _scored_eos(plan, rel)).numpy(),
                "logits/ia": prompts.vcr_logits(image, _aux_eos(plan, rel)).numpy()}

    def settings(self) -> dict[str, Any]:
        return {"logits": list(self.logit_names), "scale": prompts.LOGIT_SCALE}


class SnliVeTask(Task):
    """`similarity` = cos(image, hypothesis); k-means centres over the whole split at the end."""

    arrays = ("similarity",)
    logit_names = ("kmeans",)
    k = 3

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        image = _example_image(plan, rel)
        hypothesis = _scored_eos(plan, rel)[:, 0]
        return {"similarity": prompts.cosine_logits(image, hypothesis.unsqueeze(1),
                                                     scale=1.0)[:, 0].numpy()}

    def finish(self, shard_arrays: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        values = [a["similarity"] for a in shard_arrays if "similarity" in a]
        if not values:
            return {}
        similarities = np.concatenate(values)
        if similarities.size < self.k:
            return {}
        centres = prompts.kmeans_anchors(similarities, k=self.k)
        return {"kmeans_centres": [float(c) for c in centres],
                "kmeans_order": list(prompts.SNLI_VE_ORDER)}

    def settings(self) -> dict[str, Any]:
        return {"logits": ["kmeans"], "similarity": "cos(image, hypothesis)", "kmeans_k": self.k,
                "kmeans_logits": "-|similarity - centre_k|"}


@dataclass
class VqaTask(Task):
    """Top-k answers by sentence similarity to the question; `template` = 100 cos(image,
    statement(question, answer_k)) over those `candidates` (ids into `vocab`)."""

    vocab: list[str]
    vocab_source: str
    encoder: Any                       # SentenceEncoder-like: .encode(list[str]) -> [N, D]
    encoder_fingerprint: dict[str, Any]
    top_k: int = 10
    arrays: tuple[str, ...] = ("logits/template", "candidates")
    logit_names: tuple[str, ...] = ("template",)
    _vocab_emb: torch.Tensor | None = field(default=None, repr=False)

    def prepare(self, plan: ShardPlan) -> None:
        questions = [ex.choices[0].text for ex in plan.examples]
        candidates = prompts.prefilter_answers(questions, self.vocab, _VocabCache(self),
                                               k=self.top_k)
        statements = [[Text.from_string(prompts.question_to_statement(q, self.vocab[a]))
                       for a in row] for q, row in zip(questions, candidates)]
        plan.aux_texts, plan.example_aux = unique_texts(statements)
        plan.arrays["candidates"] = candidates.astype(np.int64)

    def score(self, plan: ShardPlan, rel: RelevanceFeatures) -> dict[str, np.ndarray]:
        image = _example_image(plan, rel)
        return {"logits/template": prompts.cosine_logits(image, _aux_eos(plan, rel)).numpy()}

    def settings(self) -> dict[str, Any]:
        return {"logits": ["template"], "scale": prompts.LOGIT_SCALE, "top_k": self.top_k,
                "answer_vocab": {"source": self.vocab_source, "size": len(self.vocab),
                                 "sha256": _digest(self.vocab)},
                "sentence_encoder": self.encoder_fingerprint,
                "templates": [[name, pattern.pattern] for name, pattern, _ in prompts.TEMPLATES]}


class _VocabCache:
    """Wraps the sentence encoder so the answer vocabulary is embedded once per run."""

    def __init__(self, task: VqaTask) -> None:
        self.task = task

    def encode(self, sentences: list[str]) -> torch.Tensor:
        if sentences == self.task.vocab:
            if self.task._vocab_emb is None:
                self.task._vocab_emb = self.task.encoder.encode(sentences)
            return self.task._vocab_emb
        return self.task.encoder.encode(sentences)


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


# --- VQA answer vocabulary ------------------------------------------------------------------

IGNORED_ANSWERS = {"", "<unk>"}


def read_answer_vocab(path: Path) -> list[str]:
    """A vocabulary file's answers (see `madcache.data.vqa.load_answer_vocab` for the formats)
    without the empty and `<unk>` entries, which are never candidates. Candidate ids index this
    list, which the manifest stores as `extra.answer_vocab`."""
    from madcache.data.vqa import load_answer_vocab

    vocab = [a.strip() for a in load_answer_vocab(path) if a.strip() not in IGNORED_ANSWERS]
    if not vocab:
        raise ConfigError(f"answer vocabulary {path} holds no answers")
    return list(dict.fromkeys(vocab))


def build_answer_vocab(examples: list[Example], size: int) -> list[str]:
    """The `size` most frequent annotated answers of the split (ties: alphabetical)."""
    counts = Counter(a.strip() for ex in examples for a in ex.answers
                     if a.strip() not in IGNORED_ANSWERS)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    vocab = [answer for answer, _ in ranked[:size]]
    if not vocab:
        raise ConfigError("no answer vocabulary: the split has no annotated answers; pass "
                          "--answer-vocab FILE")
    return vocab


def make_task(dataset: str) -> Task:
    """The protocol object for datasets that need no extra inputs (VQA: `make_vqa_task`)."""
    return {"vcr": VcrTask, "snli-ve": SnliVeTask}.get(dataset, Task)()
