"""The training stand-ins: a tiny Student, hand-built Targets and `make_setup`, a `Setup` for the
real `train` built in milliseconds (tests/train, tests/faults, the torchrun and preemption
workers). Not a test module: tests/train/conftest.py's `load_standins` loads it by path (test
directories are not packages under --import-mode=importlib).

Everything here is a pure function of its arguments (the targets' seed is a CRC of the example
ids, never Python's salted `hash`), so the golden curves (test_golden_curves.py) hold in every
process.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from madcache.cache.targets import Targets, WordTargets
from madcache.data.records import Example, Text
from madcache.method.losses import Projections, projection_widths
from madcache.method.methods import get_method
from madcache.students.base import RegionInputs, StudentOutput
from madcache.train import loop
from madcache.train.config import TrainConfig
from madcache.train.data import DataSource, targets_to_tensors
from madcache.train.setup import Setup

VOCAB, H, DV, DT, DR = 64, 8, 6, 5, 4


class TinyStudent(nn.Module):
    """Implements the Student protocol: one token per word, mean pooling, dropout."""

    hidden_size = H
    task = "multiple_choice"

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, H)
        self.region = nn.Linear(DR, H)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(H, 1)
        self.mlm = nn.Linear(H, VOCAB)

    def prepare(self, examples, regions):
        texts = [[t for t in ex.texts] for ex in examples]
        length = max(len(t.words) for row in texts for t in row)
        ids = torch.zeros(len(examples), len(texts[0]), length, dtype=torch.long)
        spans = torch.full((len(examples), len(texts[0]), length, 2), -1, dtype=torch.long)
        for b, row in enumerate(texts):
            for c, text in enumerate(row):
                for i, word in enumerate(text.words):
                    ids[b, c, i] = sum(map(ord, word.text.lower())) % (VOCAB - 1) + 1
                    spans[b, c, i] = torch.tensor([word.start, word.end])
        return {"ids": ids, "spans": spans, "regions": regions}

    def forward(self, inputs):
        ids, regions = inputs["ids"], inputs["regions"]
        img = self.region(regions.feat).mean(dim=1)  # [B, H]
        tokens = self.drop(self.emb(ids)) + img[:, None, None, :]  # [B, C, L, H]
        real = (ids > 0).unsqueeze(-1).float()
        cls = (tokens * real).sum(2) / real.sum(2).clamp(min=1)  # [B, C, H]
        image_token = img[:, None, :] + 0.5 * cls
        return StudentOutput(
            logits=self.head(torch.tanh(cls + image_token)).squeeze(-1),
            image_token=image_token,
            cls_token=cls,
            text_tokens=tokens,
            token_spans=inputs["spans"],
        )

    def pretrain_losses(self, inputs, examples, generator):
        ids = inputs["ids"]
        masked = ids.clone()
        pick = (torch.rand(ids.shape, generator=generator) < 0.3) & (ids > 0)
        masked[pick] = 0
        out = self({**inputs, "ids": masked})
        mlm = nn.functional.cross_entropy(
            self.mlm(out.text_tokens).flatten(0, 2), ids.flatten(), reduction="mean"
        )
        itm = out.logits.pow(2).mean()
        return {"mlm": mlm, "itm": itm}


SENTENCES = [
    "a red dog runs",
    "the cat sleeps here",
    "two birds fly high",
    "a man reads books",
    "people walk on streets",
    "the car is blue",
]


def make_examples(n, split="train"):
    rng = np.random.default_rng(7 if split == "train" else 8)
    out = []
    for i in range(n):
        choices = tuple(Text.from_string(SENTENCES[(i + k) % len(SENTENCES)]) for k in range(4))
        out.append(
            Example(
                id=f"{split}{i}:qa",
                dataset="vcr",
                split=split,
                image_id=f"img{i % 5}",
                image_path=f"img{i % 5}.jpg",
                choices=choices,
                label=int(rng.integers(4)),
                category="activity",
                group=f"{split}{i}",
                context=Text.from_string("what is it?"),
            )
        )
    return out


def make_targets(examples):
    rng = np.random.default_rng(zlib.crc32("\n".join(e.id for e in examples).encode()))
    texts = [t for ex in examples for t in ex.texts]
    counts = [len(t.words) for t in texts]
    n_words = sum(counts)
    words = WordTargets(
        offsets=np.cumsum([0] + counts).astype(np.int64),
        feat=rng.standard_normal((n_words, DT)).astype(np.float32),
        span=np.array([[w.start, w.end] for t in texts for w in t.words], dtype=np.int32),
        vr=np.zeros(n_words, np.float32),
        yake=np.zeros(n_words, np.float32),
        score=rng.random(n_words).astype(np.float32),
        truncated=np.zeros(n_words, bool),
    )
    return Targets(
        example_ids=[e.id for e in examples],
        num_choices=4,
        image=rng.standard_normal((len(examples), DV)).astype(np.float32),
        text_eos=rng.standard_normal((len(examples), 4, DT)).astype(np.float32),
        words=words,
        logits={"ia": rng.standard_normal((len(examples), 4)).astype(np.float32)},
        default_logits="ia",
    )


def regions(examples):
    feats = torch.stack(
        [
            torch.sin(
                torch.arange(3 * DR, dtype=torch.float32).reshape(3, DR)
                * (1 + int(ex.image_id[3:]))
            )
            for ex in examples
        ]
    )
    return RegionInputs(
        feats, torch.zeros(len(examples), 3, 4), torch.ones(len(examples), 3, dtype=bool)
    )


def make_setup(tmp_path, method="mad", chunk=None, **overrides):
    torch.manual_seed(0)
    values = dict(
        dataset="vcr",
        root=str(tmp_path),
        out=str(tmp_path / "run"),
        method=method,
        cache="hand-built",
        batch_size=4,
        lr=1e-2,
        epochs=3,
        eval_split="val",
    )
    config = TrainConfig(**{**values, **overrides})
    m = get_method(method)
    student = TinyStudent()
    train_examples = make_examples(10)
    table = make_targets(train_examples)
    index = table.row_of()

    def load(examples):
        if not m.distils:
            return None
        rows = [index[e.id] for e in examples]
        sub = Targets(
            example_ids=[e.id for e in examples],
            num_choices=4,
            image=table.image[rows],
            text_eos=table.text_eos[rows],
            words=_word_rows(table.words, rows),
            logits={"ia": table.logits["ia"][rows]},
            default_logits="ia",
        )
        return targets_to_tensors(sub, m, m=config.m, logits=None, seed=config.seed)

    size = chunk or len(train_examples)
    chunks = [list(range(i, min(i + size, 10))) for i in range(0, 10, size)]
    source = DataSource(train_examples, chunks, load)
    return Setup(
        config=config,
        method=m,
        student=student,
        projections=Projections(H, projections(m)),
        task_source=source,
        af_source=DataSource(train_examples, chunks, load) if m.stage("af") else None,
        regions=regions,
        eval_examples=make_examples(6, "val"),
        provenance={"cache_fingerprint": "abc"},
        save_student=lambda s, p: (
            p.mkdir(parents=True, exist_ok=True),
            save_file(s.state_dict(), str(p / "model.safetensors")),
        ),
    )


def projections(method):
    """The method's projections, and for every method P_v and P_t (the stand-ins always had
    them; they are drawn after the student, so the baseline's numbers do not depend on them)."""
    return {"vision": DV, "text": DT, **projection_widths(method.terms, {"image": DV, "text": DT})}


def _word_rows(words, rows):
    pieces = [slice(words.offsets[r * 4], words.offsets[r * 4 + 4]) for r in rows]
    counts = np.concatenate([np.diff(words.offsets[r * 4 : r * 4 + 5]) for r in rows])

    def cat(a):
        return np.concatenate([a[p] for p in pieces])

    return WordTargets(
        offsets=np.cumsum([0, *counts]).astype(np.int64),
        feat=cat(words.feat),
        span=cat(words.span),
        vr=cat(words.vr),
        yake=cat(words.yake),
        score=cat(words.score),
        truncated=cat(words.truncated),
    )


def run_cli(monkeypatch, args):
    """`madcache train ARGS` with `run_training` replaced: (the click result, the TrainConfig
    the command built)."""
    from click.testing import CliRunner

    from madcache.cli import cli

    seen = {}

    def fake(config):
        seen["config"] = config
        return {"history": [{"global_step": 3}], "eval": {"val": {"q2a": 50.0}}}

    monkeypatch.setattr(loop, "run_training", fake)
    result = CliRunner().invoke(cli, ["train", *args])
    return result, seen.get("config")
