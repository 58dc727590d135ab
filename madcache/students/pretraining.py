"""The adaptive-finetuning stage's label-free losses every student shares (MAD.md, "Adaptive
finetuning"): BERT masking for MLM, and image-text matching pairs whose positives are each
example's `label_free_text` (VCR/VQA question, SNLI-VE premise caption), never an answer choice:
three of VCR's four choices are false of the image, and knowing the right one is the label.
Random draws come from a CPU generator, so masks and pairings repeat for a seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from madcache.data.records import Example


def mask_tokens(
    ids: torch.Tensor,
    real: torch.Tensor,
    generator: torch.Generator,
    *,
    vocab_size: int,
    mask_id: int,
    rate: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: select `rate` of the real tokens; 80% -> [MASK], 10% -> random, 10% kept.
    Returns (masked ids, selected [N, L] bool)."""
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    kind = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator).to(ids.device)
    selected = (draw < rate) & real
    masked = ids.clone()
    masked[selected & (kind < 0.8)] = mask_id
    swap = selected & (kind >= 0.8) & (kind < 0.9)
    masked[swap] = random_ids[swap]
    return masked, selected


def itm_pairs(
    image_ids: Sequence[str], rows: Sequence[int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the label-free text of each example in `rows`: the image (batch row) it is paired
    with, and whether that is its own image.

    Half the texts (a coin per text) take the image of another example of the batch (a random
    shift); a pairing counts as a negative only when the image ids differ (VCR's Q->A and QA->R
    examples share an image).
    """
    batch = len(image_ids)
    own = torch.as_tensor(list(rows), dtype=torch.long)
    flip = torch.rand(own.shape, generator=generator) < 0.5
    shift = torch.randint(1, max(batch, 2), own.shape, generator=generator)
    other = torch.where(flip & (batch > 1), (own + shift) % batch, own)
    same = torch.tensor(
        [image_ids[a] == image_ids[b] for a, b in zip(own.tolist(), other.tolist())]
    )
    return other, same


def itm_batch(
    examples: Sequence[Example], generator: torch.Generator
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Image-text matching pairs of a batch: (the label-free texts, the batch row of the image
    each is paired with, whether that pair matches). Examples without a label-free text take no
    part; the pairing is `itm_pairs` over the whole batch's images."""
    rows = [b for b, ex in enumerate(examples) if ex.label_free_text is not None]
    if not rows:
        return [], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    image, matched = itm_pairs([ex.image_id for ex in examples], rows, generator)
    return [examples[b].label_free_text.text for b in rows], image, matched
