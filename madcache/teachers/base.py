"""The fixed feature contract every teacher honours, and the teacher registry.

A teacher is split so that extraction can overlap CPU work with the forward pass:
- `image_transform()` and `text_processor()` return picklable callables (no model inside) that run
  in worker processes: PIL image -> pixel tensor; texts -> a `TokenBatch`.
- `encode_images` / `encode_tokens` run the frozen model (inference mode) in the main process.
Per-word features are pooled inside the teacher (it alone knows its tokenizer): a word's feature
is the mean of its sub-token features, in the same space as the text embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from madcache.core.registry import Registry
from madcache.data.records import Text
from madcache.data.wordpieces import TokenBatch


@dataclass
class TextEncoding:
    eos: torch.Tensor  # [B, Dt] text embedding (CLIP: projected EOS)
    word_feat: list[torch.Tensor]  # B x [W_b, Dt]: mean of each word's sub-token features
    word_truncated: list[torch.Tensor]  # B x [W_b] bool: word lost (wholly or partly) to truncation
    truncated: torch.Tensor  # [B] bool


@runtime_checkable
class Teacher(Protocol):
    """A joint-space teacher (CLIP-style) also has `logit_scale` and `logit_bias`: its own
    cosine -> logit map (`logit = logit_scale * cos + logit_bias`), used for teacher logits."""

    name: str
    modalities: frozenset[str]  # subset of {"image", "text"}
    joint_space: bool  # image/text embeddings comparable by cosine (CLIP-style)
    image_dim: int | None
    text_dim: int | None

    def image_transform(self) -> Callable[[Any], torch.Tensor]: ...

    def text_processor(self) -> Callable[[Sequence[Text]], TokenBatch]: ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_tokens(self, batch: TokenBatch) -> TextEncoding: ...

    def fingerprint(self) -> dict[str, Any]:
        """Name, checkpoint file digest(s) and preprocessing: everything that changes outputs."""
        ...


def pool_words(
    token_feat: torch.Tensor, token_word: torch.Tensor, n_words: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean of sub-token features per word. Words with no surviving token get zeros + a flag.

    token_feat [B, L, D], token_word [B, L] (-1 = not a word token). Returns per text the
    [W, D] word features and a [W] bool 'truncated' mask.
    """
    feats, lost = [], []
    for b, n in enumerate(n_words):
        ids = token_word[b]
        keep = ids >= 0
        sums = torch.zeros(n, token_feat.shape[-1], dtype=torch.float32, device=token_feat.device)
        counts = torch.zeros(n, dtype=torch.float32, device=token_feat.device)
        if n:
            sums.index_add_(0, ids[keep], token_feat[b][keep].float())
            counts.index_add_(0, ids[keep], torch.ones_like(ids[keep], dtype=torch.float32))
        feats.append(sums / counts.clamp(min=1).unsqueeze(-1))
        lost.append(counts == 0)
    return feats, lost


def text_encoding(eos: torch.Tensor, token_feat: torch.Tensor, batch: TokenBatch) -> TextEncoding:
    """The `TextEncoding` of `batch` from a forward pass: the text embeddings `eos` [B, Dt] and
    the words pooled from the token features `token_feat` [B, L', Dt] (L' <= L: a teacher may
    trim the batch's padding), on the CPU in float32. A word is flagged truncated when the
    tokenizer cut it (`extra["word_truncated"]`) or none of its tokens is left."""
    word_feat, no_token = pool_words(
        token_feat.float().cpu(), batch.token_word[:, : token_feat.shape[1]], batch.n_words
    )
    cut = batch.extra.get("word_truncated") or [
        torch.zeros(n, dtype=torch.bool) for n in batch.n_words
    ]
    return TextEncoding(
        eos=eos.float().cpu(),
        word_feat=word_feat,
        word_truncated=[c | z for c, z in zip(cut, no_token)],
        truncated=batch.truncated.clone(),
    )


def inference_autocast(device: str, enabled: bool) -> Callable[[], AbstractContextManager]:
    """The context a teacher forward runs in: bf16 autocast on CUDA when enabled, else nothing
    (CPU autocast gains nothing here and would change the cached values)."""
    if enabled and str(device).startswith("cuda"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


TeacherFactory = Callable[..., Teacher]
TEACHERS: Registry[TeacherFactory] = Registry("teacher", group="madcache.teachers")
