"""Adapter baselines: small heads trained on frozen, cached teacher features (the paper's
"adapters over frozen CLIP" rows), in seconds and without a student or a teacher model.

Input per scored text (choice) c of an example: `[image_feat ; text_eos_c]` (both L2-normalised
by default, as a CLIP linear probe does). The heads are the entries of `ADAPTERS` (each names its
`AdapterHead` subclass; `adapter_head` builds one); the rest of madcache asks that registry
whether a method is an adapter.

Outputs follow the dataset spec's task: multiple choice scores each choice (one logit per choice,
softmax over choices: VCR's 4); classification is a classifier over the spec's `label_names`
(SNLI-VE's 3); multilabel a classifier over the cache's answer vocabulary trained with the soft
VQA scores (BCE). Training uses the students' low-shot split (`train.setup.training_subset`:
a `split_file`, or `per_category` sampled with `seed`), is seeded, and keeps the trainer's run
directory contract (train/rundir.py, docs/training.md "The run directory"): a new run needs an
empty `out`, `resume` refuses a setting that would change the result, config.json and
inputs.json are recorded after every check, metrics.json last. So reports show adapters beside
baseline / MD / MAD. Evaluation needs a cache of each evaluated split (`eval_caches`: e.g.
`{"val": ..., "val_sm": ...}`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from madcache.cache.manifest import cache_digest
from madcache.core.config import check_ranges, config_from_dict, setting
from madcache.core.errors import ConfigError, RunDirectoryError
from madcache.core.io import check_output_location, git_commit, write_json, writing
from madcache.core.registry import Registry
from madcache.data import DATASETS, Dataset, Example
from madcache.data.base import CLASSIFICATION, MULTILABEL, MULTIPLE_CHOICE
from madcache.data.metrics import score_logits, without_counts
from madcache.evaluation.cached import dataset_examples, index_examples
from madcache.method.losses import task_criterion
from madcache.train import optim

ADAPTER_STUDENT = "frozen-teacher"  # the "student" column of every adapter's rows in reports
ADAPTER_WEIGHTS = "adapter.safetensors"


# ----------------------------------------------------------------------------- the heads


class AdapterHead(nn.Module):
    """Maps image [N, Dv] and per-choice text [N, C, Dt] features to logits: `out_dim == 1`:
    one score per choice -> [N, C]; otherwise (C == 1) class logits [N, out_dim]. Each
    `ADAPTERS` entry is a subclass, built with (image_dim, text_dim, out_dim, hidden, heads,
    dropout), whose `score` maps the pairs [N, C, Dv] x [N, C, Dt] to [N, C, out_dim]."""

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        n, c = text.shape[:2]
        out = self.score(image[:, None, :].expand(n, c, image.shape[-1]), text)
        return out.squeeze(-1) if out.shape[-1] == 1 else out[:, 0, :]

    def score(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LinearHead(AdapterHead):
    """One linear layer on [image ; text]."""

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, **_: Any) -> None:
        super().__init__()
        self.body = nn.Linear(image_dim + text_dim, out_dim)

    def score(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([image, text], dim=-1))


class MLP3Head(AdapterHead):
    """Three linear layers on [image ; text], ReLU + dropout between."""

    def __init__(
        self, image_dim: int, text_dim: int, out_dim: int, *, hidden: int, dropout: float, **_: Any
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(image_dim + text_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def score(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([image, text], dim=-1))


class TransformerHead(AdapterHead):
    """Image and text as two tokens, one transformer encoder layer, mean pool, linear."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        out_dim: int,
        *,
        hidden: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.image_in = nn.Linear(image_dim, hidden)
        self.text_in = nn.Linear(text_dim, hidden)
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True
        )
        self.body = nn.Linear(hidden, out_dim)

    def score(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        n, c = text.shape[:2]
        tokens = torch.stack([self.image_in(image), self.text_in(text)], dim=2)
        return self.body(self.layer(tokens.reshape(n * c, 2, -1)).mean(dim=1).reshape(n, c, -1))


@dataclass(frozen=True)
class Adapter:
    """An adapter baseline, a method that trains a head on frozen cached teacher features
    instead of a student (`madcache train --method`, a pipeline's `methods`)."""

    name: str  # the method name, e.g. "adapter-linear"
    head: type[AdapterHead]  # the head it trains on [image_feat ; text_eos_c]
    report_order: int  # its rank among the adapters' rows of a report (after the students')


ADAPTERS: Registry[Adapter] = Registry("adapter")
for _adapter in (
    Adapter("adapter-linear", LinearHead, report_order=0),
    Adapter("adapter-mlp3", MLP3Head, report_order=1),
    Adapter("adapter-transformer", TransformerHead, report_order=2),
):
    ADAPTERS.register(_adapter.name, _adapter)


def adapter_head(
    kind: str,
    image_dim: int,
    text_dim: int,
    out_dim: int,
    *,
    hidden: int = 256,
    heads: int = 4,
    dropout: float = 0.1,
) -> AdapterHead:
    """The head of the adapter `kind` (an `ADAPTERS` name)."""
    return ADAPTERS.get(kind).head(
        image_dim, text_dim, out_dim, hidden=hidden, heads=heads, dropout=dropout
    )


# ----------------------------------------------------------------------------- the run's settings


@dataclass
class AdapterConfig:
    """One adapter run. Paths are used as given (the sweep resolves them)."""

    dataset: str = setting(help="A registered dataset (vcr, snli-ve, vqa, ...).")
    cache: str = setting(help="Teacher cache of the training split.")
    out: str = setting(help="Run directory, e.g. runs/NAME.")
    method: str = setting("adapter-linear", help="The head: " + ", ".join(ADAPTERS) + ".")
    eval_caches: dict[str, str] = setting(
        factory=dict, help="Eval name -> the teacher cache of that split."
    )
    root: str | None = setting(None, help="Dataset root (VQA: soft targets, human answers).")
    split_file: str | None = setting(
        None, existing_file=True, help="A saved low-shot split (ids); default: the whole cache."
    )
    per_category: int | None = setting(
        None,
        minimum=1,
        help="Low-shot: K examples per category (recorded as shots; sampled without split_file).",
    )
    seed: int = setting(
        0, minimum=0, help="Seed of the sample, the initialisation and the data order."
    )
    epochs: int = setting(100, minimum=1, help="Training epochs.")
    batch_size: int = setting(64, minimum=1, help="Examples per step.")
    lr: float = setting(1e-3, above=0, help="Learning rate (AdamW).")
    weight_decay: float = setting(1e-4, minimum=0, help="AdamW weight decay.")
    hidden: int = setting(256, minimum=1, help="Hidden width (mlp3, transformer).")
    heads: int = setting(4, minimum=1, help="Attention heads (transformer).")
    dropout: float = setting(0.1, minimum=0, below=1, help="Dropout (mlp3, transformer).")
    normalize: bool = setting(True, help="L2-normalise the cached features first.")
    read_options: dict[str, Any] = setting(
        factory=dict, flag="read-option", help="A dataset reader option (repeatable)."
    )
    resume: bool = setting(
        False,
        help="Run again in --out, whose run was started with the "
        "same settings (an adapter has no checkpoint: it trains "
        "from the start).",
    )
    overwrite: bool = setting(
        False,
        help="Delete the run files madcache wrote in --out and "
        "train again; nothing else there is touched.",
    )
    device: str = setting("cpu", help="Torch device: cpu, cuda or cuda:N.")

    # what the trainer's run-directory check (train/rundir.py: open_run_dir) reads of a run's
    # config besides the fields above: an adapter reads no region store and trains no student
    regions: ClassVar[None] = None
    eval_regions: ClassVar[None] = None
    student_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.method not in ADAPTERS:
            raise ConfigError(f"unknown adapter '{self.method}'. Available: {', '.join(ADAPTERS)}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, where: str = "", table: str = "adapter"
    ) -> AdapterConfig:
        """Checked values (`madcache.core.config`); errors name `table.key` after `where`."""
        return config_from_dict(cls, values, noun="adapter config key", where=where, table=table)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- data


@dataclass
class FeatureSet:
    """Cached features of some examples plus what scores them: stand-in examples from the cache
    index (ids, labels, groups, categories), or for a multilabel dataset its own examples (the
    human answers and soft scores)."""

    examples: list[Example]
    image: torch.Tensor  # [N, Dv]
    text: torch.Tensor  # [N, C, Dt]
    soft: torch.Tensor | None = None  # multilabel [N, V] soft scores over the vocabulary

    @property
    def ids(self) -> list[str]:
        return [ex.id for ex in self.examples]


def load_features(cache: Any, examples: Sequence[Example], *, normalize: bool = True) -> FeatureSet:
    """The cached image and text features of `examples` (stand-ins from the cache index) from
    the open `cache`."""
    targets = cache.load_targets([ex.id for ex in examples])
    if targets.image is None or targets.text_eos is None:
        raise ConfigError(
            f"adapters need image and text features; the cache {cache.path} lacks one of them"
        )
    image = torch.from_numpy(np.asarray(targets.image, dtype=np.float32))
    text = torch.from_numpy(np.asarray(targets.text_eos, dtype=np.float32))
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return FeatureSet(list(examples), image, text)


def training_features(config: AdapterConfig) -> tuple[FeatureSet, Any, dict[str, Any]]:
    """The features of the training examples: the low-shot split the students use (a split
    file, or sampled per category from the cache index), else every cached example; with the
    open cache and the split's provenance (`split_file`, `split_digest`)."""
    from madcache.cache.reader import open_cache
    from madcache.train.setup import record_split, training_subset

    cache = open_cache(config.cache)
    subset, split = training_subset(config, index_examples(cache, config.dataset))
    features = load_features(cache, subset, normalize=config.normalize)
    return features, cache, record_split(config, split)


def attach_answers(
    features: FeatureSet, vocab: Sequence[str], config: AdapterConfig, split: str
) -> None:
    """A multilabel dataset's own examples (human answers) and soft scores over `vocab`, read
    from the dataset files."""
    if config.root is None:
        raise ConfigError(
            f"{config.dataset} adapters need the dataset root (soft scores, human answers)"
        )
    features.examples = dataset_examples(
        config.dataset, config.root, split, features.ids, config.read_options
    )
    index = {a: i for i, a in enumerate(vocab)}
    soft = torch.zeros(len(features.examples), len(vocab))
    for n, example in enumerate(features.examples):
        for answer, value in (example.answer_scores or {}).items():
            if answer in index:
                soft[n, index[answer]] = value
    features.soft = soft


# ----------------------------------------------------------------------------- training


def output_size(dataset: Dataset, vocab: Sequence[str] | None) -> int:
    """The head's outputs by the dataset's task: one score per choice, one logit per class, or
    one per answer of the vocabulary."""
    return {
        MULTIPLE_CHOICE: 1,
        CLASSIFICATION: len(dataset.label_names or ()),
        MULTILABEL: len(vocab or ()),
    }[dataset.task]


def adapter_loss(logits: torch.Tensor, features: FeatureSet, rows: torch.Tensor) -> torch.Tensor:
    """The students' task loss (`task_criterion`) on the soft scores or the labels of `rows`."""
    if features.soft is not None:
        return task_criterion(logits, features.soft[rows])
    return task_criterion(logits, torch.tensor([features.examples[i].label for i in rows.tolist()]))


def fit(head: AdapterHead, features: FeatureSet, config: AdapterConfig) -> list[dict[str, Any]]:
    """AdamW with cosine decay over `epochs`; the order is a pure function of the seed."""
    rows = torch.tensor(
        [
            i
            for i, ex in enumerate(features.examples)
            if ex.label is not None or features.soft is not None
        ],
        dtype=torch.long,
    )
    if len(rows) == 0:
        raise ConfigError("no labelled training examples for the adapter")
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(rows) / config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    history, step = [], 0
    head.train()
    for epoch in range(config.epochs):
        order = rows[torch.randperm(len(rows), generator=generator)]
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = adapter_loss(head(features.image[batch], features.text[batch]), features, batch)
            optim.descend(optimizer, loss, lr=optim.cosine(step, steps, base=config.lr))
            step += 1
            total, count = total + loss.item() * len(batch), count + len(batch)
        history.append({"stage": "task", "epoch": epoch + 1, "loss": total / count})
    return history


@torch.no_grad()
def predict(head: AdapterHead, features: FeatureSet, batch_size: int = 1024) -> torch.Tensor:
    head.eval()
    out = [
        head(features.image[i : i + batch_size], features.text[i : i + batch_size])
        for i in range(0, len(features.ids), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, 0)


def score(
    dataset: str, features: FeatureSet, logits: torch.Tensor, vocab: Sequence[str] | None
) -> dict[str, float]:
    """The run-contract metrics (percent) of `logits` on `features`."""
    return without_counts(score_logits(dataset, features.examples, logits, vocab))


# ----------------------------------------------------------------------------- a run


def run_adapter(config: AdapterConfig) -> dict[str, Any]:
    """Train one adapter on cached features, evaluate it on each eval cache, and write the run
    directory as a training run does (train/rundir.py): checked before anything is written,
    config.json and inputs.json once every check passed, metrics.json with status "complete"
    last. Returns the metrics."""
    from madcache.train.rundir import METRICS, RESUMABLE_NOTE, record_run, run_inputs

    run_dir = Path(config.out)
    open_adapter_run_dir(config)
    torch.manual_seed(config.seed)
    train, cache, split_info = training_features(config)
    provenance = run_provenance(cache.manifest, split_info)
    if config.resume:
        check_adapter_resume(run_dir, config, run_inputs(provenance))
    record_run(run_dir, config.to_dict(), run_inputs(provenance))
    vocab = _vocab(config, cache.manifest)
    if vocab is not None:
        attach_answers(train, vocab, config, cache.manifest.get("split", "train"))
    head = adapter_head(
        config.method,
        train.image.shape[1],
        train.text.shape[2],
        output_size(DATASETS.get(config.dataset), vocab),
        hidden=config.hidden,
        heads=config.heads,
        dropout=config.dropout,
    )
    history = fit(head, train, config)
    evaluation = {
        name: evaluate_head(head, config, path, vocab) for name, path in config.eval_caches.items()
    }
    metrics = {
        "run": run_dir.name,
        "dataset": config.dataset,
        "method": config.method,
        "student": ADAPTER_STUDENT,
        "teachers": cache.manifest.get("teachers"),
        "shots": config.per_category,
        "seed": config.seed,
        "status": "complete",
        "history": history,
        "eval": evaluation,
        "provenance": provenance,
    }
    with writing(run_dir, error=RunDirectoryError, then=RESUMABLE_NOTE):
        save_file(
            {k: v.contiguous() for k, v in head.state_dict().items()},
            str(run_dir / ADAPTER_WEIGHTS),
        )
        write_json(run_dir / METRICS, metrics)
    return metrics


def open_adapter_run_dir(config: AdapterConfig) -> None:
    """The trainer's checks of `out` (train/rundir.py: open_run_dir: empty unless resume or
    overwrite, never over an input or inside the dataset root), the evaluated caches counted
    as inputs too; overwrite also deletes the adapter's weights."""
    from madcache.train.rundir import open_run_dir

    check_output_location(config.out, inputs=config.eval_caches.values())
    open_run_dir(config)
    if config.overwrite:
        (Path(config.out) / ADAPTER_WEIGHTS).unlink(missing_ok=True)


def check_adapter_resume(run_dir: Path, config: AdapterConfig, inputs: Mapping[str, Any]) -> None:
    """The trainer's resume check (train/rundir.py: check_resume), except that the evaluated
    caches may change: they choose what the head is scored on, not the head (a sweep that adds
    an evaluated split runs its adapters again)."""
    from madcache.train.rundir import CONFIG, check_resume, load_run_config

    values = config.to_dict()
    if (run_dir / CONFIG).is_file():
        values["eval_caches"] = load_run_config(run_dir).get("eval_caches")
    check_resume(run_dir, values, inputs)


def run_provenance(manifest: Mapping[str, Any], split_info: Mapping[str, Any]) -> dict[str, Any]:
    """What the run read (the cache's fingerprint, the split) and the code that ran it."""
    import madcache

    return {
        "cache_fingerprint": cache_digest(manifest),
        **split_info,
        "git_commit": git_commit(),
        "madcache_version": madcache.__version__,
    }


def evaluate_head(
    head: AdapterHead, config: AdapterConfig, cache_path: str, vocab: Sequence[str] | None
) -> dict[str, float]:
    from madcache.cache.reader import open_cache

    cache = open_cache(cache_path)
    features = load_features(cache, index_examples(cache), normalize=config.normalize)
    if vocab is not None:
        attach_answers(features, vocab, config, cache.manifest.get("split", "val"))
    return score(config.dataset, features, predict(head, features), vocab)


def _vocab(config: AdapterConfig, manifest: Mapping[str, Any]) -> list[str] | None:
    if DATASETS.get(config.dataset).task != MULTILABEL:
        return None
    from madcache.evaluation.zeroshot import answer_vocabulary

    return answer_vocabulary(manifest, Path(config.root) if config.root else None)
