"""From one shard's encoded batches to the shard arrays of docs/architecture.md."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from madcache.extraction.plan import ShardPlan
from madcache.extraction.protocols import LogitProtocol, RelevanceFeatures
from madcache.extraction.scores import combine_scores, visual_relevance
from madcache.teachers.base import TextEncoding

INDEX_COLUMNS = ("category", "label", "group", "image_id")


@dataclass
class EncodedTexts:
    """Per-string encodings of a shard's texts, in `plan.texts` (or `aux_texts`) order."""

    eos: list[torch.Tensor] = field(default_factory=list)
    word_feat: list[torch.Tensor] = field(default_factory=list)
    word_truncated: list[torch.Tensor] = field(default_factory=list)
    truncated: list[torch.Tensor] = field(default_factory=list)

    def add(self, encoding: TextEncoding) -> None:
        self.eos.append(encoding.eos.float().cpu())
        self.word_feat.extend(w.float().cpu() for w in encoding.word_feat)
        self.word_truncated.extend(w.bool().cpu() for w in encoding.word_truncated)
        self.truncated.append(encoding.truncated.bool().cpu())

    def eos_matrix(self) -> torch.Tensor:
        return torch.cat(self.eos) if self.eos else torch.zeros(0, 0)


@dataclass
class ShardBuffers:
    """What the forward passes produced for one shard so far, per teacher key."""

    images: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    texts: dict[str, EncodedTexts] = field(default_factory=dict)
    aux: dict[str, EncodedTexts] = field(default_factory=dict)
    yake: list[np.ndarray] = field(default_factory=list)
    content: list[np.ndarray] = field(default_factory=list)  # per text: selectable words
    jobs_done: int = 0

    def image_matrix(self, key: str) -> torch.Tensor:
        return torch.cat(self.images[key])


@dataclass(frozen=True)
class RoleKeys:
    vision: str
    text: str
    relevance: str | None


def assemble_shard(
    plan: ShardPlan, buffers: ShardBuffers, keys: RoleKeys, task: LogitProtocol, *, dtype: np.dtype
) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """The shard arrays and index columns, ready for `CacheWriter.write_shard`."""
    arrays: dict[str, np.ndarray] = {
        "image_id": np.array(plan.image_ids, dtype=str),
        "image_feat": buffers.image_matrix(keys.vision).numpy().astype(dtype),
    }
    arrays.update(_text_arrays(plan, buffers, keys, dtype))
    arrays.update(
        {
            "example_id": np.array([ex.id for ex in plan.examples], dtype=str),
            "example_image": plan.example_image,
            "example_texts": plan.example_texts,
        }
    )
    arrays.update(plan.arrays)
    if keys.relevance is not None:
        arrays.update(task.score(plan, relevance_features(plan, buffers, keys.relevance)))
    return arrays, index_columns(plan)


def relevance_features(plan: ShardPlan, buffers: ShardBuffers, key: str) -> RelevanceFeatures:
    aux = buffers.aux.get(key)
    return RelevanceFeatures(
        image=buffers.image_matrix(key),
        text_eos=buffers.texts[key].eos_matrix(),
        aux_eos=aux.eos_matrix() if aux is not None and aux.eos else None,
    )


def _text_arrays(
    plan: ShardPlan, buffers: ShardBuffers, keys: RoleKeys, dtype: np.dtype
) -> dict[str, np.ndarray]:
    """Rows are (image, text) pairs; per-word arrays are flat with `word_offsets`."""
    unique = plan.text_rows[:, 1]
    encoded = buffers.texts[keys.text]
    words = [plan.texts[u].words for u in unique]
    _check_word_counts(plan, encoded)
    vr = _visual_relevance(plan, buffers, keys.relevance)
    yake = [buffers.yake[u] for u in unique]
    content = [buffers.content[u] for u in unique]
    score = [
        combine_scores(torch.from_numpy(v), torch.from_numpy(y), torch.from_numpy(c)).numpy()
        if keys.relevance is not None
        else np.full(len(y), np.nan, np.float32)
        for v, y, c in zip(vr, yake, content)
    ]
    dim = encoded.eos[0].shape[-1]
    return {
        "text_key": np.array([_text_key(plan.texts[u].text) for u in unique], dtype=str),
        "text_eos": encoded.eos_matrix()[torch.as_tensor(unique)].numpy().astype(dtype)
        if len(unique)
        else np.zeros((0, dim), dtype),
        "text_truncated": torch.cat(encoded.truncated)[torch.as_tensor(unique)].numpy()
        if len(unique)
        else np.zeros(0, bool),
        "word_offsets": np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64),
        "word_feat": _flat([encoded.word_feat[u].numpy() for u in unique], (0, dim)).astype(dtype),
        "word_span": _flat(
            [np.array([[w.start, w.end] for w in ws], np.int32).reshape(-1, 2) for ws in words],
            (0, 2),
        ).astype(np.int32),
        "word_truncated": _flat([encoded.word_truncated[u].numpy() for u in unique], (0,)).astype(
            bool
        ),
        "word_vr": _flat(vr, (0,)).astype(np.float32),
        "word_yake": _flat(yake, (0,)).astype(np.float32),
        "word_score": _flat(score, (0,)).astype(np.float32),
    }


def _visual_relevance(plan: ShardPlan, buffers: ShardBuffers, key: str | None) -> list[np.ndarray]:
    """cos(V_t, word) per stored row, with the relevance model's image and word features;
    NaN when there is no relevance model."""
    if key is None:
        return [np.full(len(plan.texts[u].words), np.nan, np.float32) for u in plan.text_rows[:, 1]]
    image = buffers.image_matrix(key)
    words = buffers.texts[key].word_feat
    return [
        visual_relevance(image[i], words[u]).numpy().astype(np.float32) for i, u in plan.text_rows
    ]


def _check_word_counts(plan: ShardPlan, encoded: EncodedTexts) -> None:
    for text, feat in zip(plan.texts, encoded.word_feat):
        if feat.shape[0] != len(text.words):
            raise RuntimeError(
                f"teacher returned {feat.shape[0]} word features for "
                f"{len(text.words)} words of {text.text!r}"
            )


def _flat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros(empty_shape, np.float32)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def index_columns(plan: ShardPlan) -> dict[str, list[Any]]:
    return {
        "category": [ex.category for ex in plan.examples],
        "label": [ex.label for ex in plan.examples],
        "group": [ex.group for ex in plan.examples],
        "image_id": [ex.image_id for ex in plan.examples],
    }
