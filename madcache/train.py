"""The training loop: a student, cached teacher targets, a method (docs/method.md).

Reads top to bottom: `TrainConfig` (the single source of truth) -> `setup` (examples, low-shot
split, cached targets loaded once, regions, student, projections) -> `train` (the AF stage when
asked, then the task stage; checkpoints; periodic validation) -> the run directory of
docs/architecture.md. The data order is a pure function of (seed, stage, epoch) and the RNG
states are checkpointed, so a resumed run ends with the same weights and metrics as an
uninterrupted one.

This module never imports a teacher (madcache.teachers) or open_clip: everything a loss needs
from a teacher comes from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

import madcache
from madcache.cache.targets import Targets
from madcache.config import config_from_dict
from madcache.data.records import Example
from madcache.distill import (Projections, af_loss, confidence_weights, mad_loss, md_loss,
                              select_words, text_term, vision_term, word_term)
from madcache.errors import ConfigError
from madcache.evaluate import score, write_json
from madcache.methods import Method, check_targets, get_method
from madcache.students.base import RegionInputs, StudentOutput

CHECKPOINT = "checkpoint.safetensors"
TRAINER_STATE = "trainer_state.json"
STUDENT_DIR = "student"


# ----------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """Everything a training run depends on. CLI flags and TOML files only supply values."""

    dataset: str
    root: str
    out: str
    method: str = "baseline"
    cache: str | None = None              # teacher-target cache (optional for baseline)
    regions: str | None = None            # region feature store of the training split
    eval_regions: str | None = None       # ... of the eval split (None: `regions`)
    split: str = "train"                  # the training split
    eval_split: str | None = "val"
    read_options: dict[str, Any] = field(default_factory=dict)
    student: str = "single-stream"
    student_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    per_category: int | None = None       # low-shot: K examples per category (with seed)
    split_file: str | None = None         # low-shot: a saved split (overrides per_category)
    epochs: int = 1
    max_steps: int | None = None          # task-stage steps (overrides epochs)
    batch_size: int = 16
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup: float = 0.1                   # fraction of a stage's steps spent warming up
    w: float = 0.05                       # MD weight
    m: int = 2                            # TS: words per text
    w_prime: float | None = None          # MAD weight; None -> w (2 + m) / 2
    teacher_logits: str | None = None     # CW logits name; None -> the cache's default
    af_epochs: int = 0                    # adaptive finetuning epochs (stage 1)
    eval_every: int = 0                   # task steps between validations (0: at the end only)
    checkpoint_every: int = 0             # steps between checkpoints (0: at the end only)
    chunk_size: int = 4096                # full-data runs: examples loaded per chunk
    resume: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.m < 0 or self.epochs < 0 or self.af_epochs < 0:
            raise ConfigError("batch_size must be >= 1 and m, epochs, af_epochs >= 0")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        get_method(self.method)  # unknown names list the valid ones

    @property
    def resolved_w_prime(self) -> float:
        """w' = w (2 + m) / 2 unless set (MAD.md, TS)."""
        return self.w * (2 + self.m) / 2 if self.w_prime is None else self.w_prime

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, values, noun="training config key")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Values from a TOML file (a `[train]` table or the top level), then `overrides`."""
        data = tomllib.loads(Path(path).read_text())
        data = data.get("train", data)
        return cls.from_dict({**data, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- data

@dataclass
class BatchTargets:
    """Teacher targets as tensors, rows aligned with a list of examples (None = not needed)."""

    image: torch.Tensor | None = None        # [N, Dv]
    text_eos: torch.Tensor | None = None     # [N, C, Dt]
    word_feat: torch.Tensor | None = None    # [N, C, m, Dt]
    word_span: torch.Tensor | None = None    # [N, C, m, 2]
    word_mask: torch.Tensor | None = None    # [N, C, m]
    logits: torch.Tensor | None = None       # [N, K] teacher logits for CW
    candidates: torch.Tensor | None = None   # [N, K] VQA candidate answer ids

    def rows(self, index: torch.Tensor) -> "BatchTargets":
        return BatchTargets(**{f.name: None if getattr(self, f.name) is None
                               else getattr(self, f.name)[index]
                               for f in dataclasses.fields(self)})

    def to(self, device: str) -> "BatchTargets":
        return BatchTargets(**{f.name: None if getattr(self, f.name) is None
                               else getattr(self, f.name).to(device)
                               for f in dataclasses.fields(self)})


def targets_to_tensors(targets: Targets, method: Method, *, m: int, logits: str | None,
                       seed: int) -> BatchTargets:
    """Keep what `method` needs, as tensors; run word selection (TS) once, here."""
    out = BatchTargets()
    if method.vision:
        out.image = torch.from_numpy(np.asarray(targets.image, dtype=np.float32))
    if method.text:
        out.text_eos = torch.from_numpy(np.asarray(targets.text_eos, dtype=np.float32))
    if method.words:
        generator = torch.Generator().manual_seed(seed) if method.selection == "random" else None
        chosen = select_words(targets.words, num_examples=len(targets.example_ids),
                              num_choices=targets.num_choices, m=m, generator=generator)
        out.word_feat = torch.from_numpy(chosen.feat)
        out.word_span = torch.from_numpy(chosen.span)
        out.word_mask = torch.from_numpy(chosen.mask)
    if method.confidence:
        name = logits or targets.default_logits or sorted(targets.logits)[0]
        out.logits = torch.from_numpy(np.asarray(targets.logits[name], dtype=np.float32))
        if targets.candidates is not None:
            out.candidates = torch.from_numpy(np.asarray(targets.candidates, dtype=np.int64))
    return out


@dataclass
class Chunk:
    examples: list[Example]
    targets: BatchTargets | None


@dataclass
class DataSource:
    """A stage's training examples in chunks (one chunk = everything, for low-shot subsets).

    `load(examples)` returns their targets (None when the method needs none); a lone chunk is
    loaded once and kept, a full split is streamed chunk by chunk each epoch.
    """

    examples: list[Example]
    chunks: list[list[int]]
    load: Callable[[list[Example]], BatchTargets | None]
    _kept: Chunk | None = None

    def chunk(self, i: int) -> Chunk:
        if self._kept is not None and len(self.chunks) == 1:
            return self._kept
        examples = [self.examples[j] for j in self.chunks[i]]
        loaded = Chunk(examples, self.load(examples))
        if len(self.chunks) == 1:
            self._kept = loaded
        return loaded

    def steps_per_epoch(self, batch_size: int) -> int:
        return sum(math.ceil(len(c) / batch_size) for c in self.chunks)


def epoch_order(source: DataSource, *, seed: int, stage: str, epoch: int,
                batch_size: int) -> list[tuple[int, torch.Tensor]]:
    """The (chunk, rows) batches of one epoch: a pure function of (seed, stage, epoch)."""
    salt = int.from_bytes(hashlib.sha256(f"{seed}:{stage}:{epoch}".encode()).digest()[:8], "little")
    generator = torch.Generator().manual_seed(salt)
    order = []
    for ci in torch.randperm(len(source.chunks), generator=generator).tolist():
        rows = torch.randperm(len(source.chunks[ci]), generator=generator)
        order.extend((ci, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))
    return order


# ----------------------------------------------------------------------------- setup

@dataclass
class Setup:
    """Everything `train` needs, built by `setup(config)` (tests build one from stand-ins)."""

    config: TrainConfig
    method: Method
    student: Any
    projections: Projections
    task_source: DataSource
    af_source: DataSource | None
    regions: Callable[[Sequence[Example]], RegionInputs]
    eval_examples: list[Example]
    provenance: dict[str, Any]
    save_student: Callable[[Any, Path], None]
    teachers: Any = None                  # the cache manifest's teacher names
    eval_regions: Callable[[Sequence[Example]], RegionInputs] | None = None  # None: `regions`


def setup(config: TrainConfig) -> Setup:
    """Read the data, the low-shot split, the cache (fingerprint checked) and build the student."""
    from madcache.data import read_examples
    from madcache.students import build_student, save_student

    method = get_method(config.method)
    torch.manual_seed(config.seed)
    examples = read_examples(config.dataset, config.root, config.split,
                             **config.read_options).examples
    subset, split_info = training_subset(config, examples)
    cache = open_checked_cache(config, method)
    regions = region_loader(config.regions)
    options = student_defaults(config, cache, regions.store) | config.student_options
    student = build_student(config.student, **options).to(config.device)
    loader = target_loader(config, method, cache)
    whole = config.split_file is None and config.per_category is None
    stream = _cache_order(examples, cache)
    task_source = _source(stream if whole else subset, loader, config.chunk_size if whole else None)
    af_source = _source(stream, loader, config.chunk_size) if config.af_epochs else None
    return Setup(
        config=config, method=method, student=student,
        projections=make_projections(student, cache, method).to(config.device),
        task_source=task_source, af_source=af_source, regions=regions,
        eval_examples=load_eval_examples(config, config.eval_split) if config.eval_split else [],
        eval_regions=region_loader(config.eval_regions) if config.eval_regions else regions,
        provenance={"cache_fingerprint": _cache_digest(cache), **split_info,
                    "git_commit": _git_commit(), "madcache_version": madcache.__version__},
        save_student=save_student, teachers=None if cache is None else cache.manifest.get("teachers"))


def training_subset(config: TrainConfig, examples: list[Example]) -> tuple[list[Example], dict]:
    """The low-shot subset (from `split_file`, or sampled per category with `seed`) or all."""
    from madcache.data import lowshot

    if config.split_file is not None:
        split = lowshot.Split.load(config.split_file)
        path = config.split_file
    elif config.per_category is not None:
        split = lowshot.sample_per_category(examples, k=config.per_category, seed=config.seed)
        path = str(Path(config.out) / "split.json")
        Path(config.out).mkdir(parents=True, exist_ok=True)
        split.save(path)
    else:
        return examples, {"split_file": None, "split_digest": None}
    wanted = set(split.ids)
    subset = [ex for ex in examples if ex.id in wanted]
    return subset, {"split_file": path, "split_digest": _file_digest(path)}


def open_checked_cache(config: TrainConfig, method: Method):
    """Open the cache (None for a method that needs none without --cache) and refuse one built
    for other data: its dataset fingerprint must match the dataset/split/text rendering in use."""
    if config.cache is None:
        if method.distils:
            raise ConfigError(f"method '{method.name}' needs --cache")
        return None
    from madcache.cache.fingerprint import dataset_fingerprint
    from madcache.cache.reader import open_cache

    cache = open_cache(config.cache)
    expected = dataset_fingerprint(config.dataset, config.root, config.split, config.read_options)
    cached_options = cache.fingerprint.get("dataset", {}).get("read_options", {})
    options = {k: v for k, v in expected["read_options"].items() if k not in TEXT_NEUTRAL_OPTIONS}
    options |= {k: v for k, v in cached_options.items() if k in TEXT_NEUTRAL_OPTIONS}
    cache.check_compatible({"dataset": {**expected, "read_options": options}})
    return cache


# reader options that do not change any text a teacher saw (extraction sets check_files=True)
TEXT_NEUTRAL_OPTIONS = ("check_files",)


def target_loader(config: TrainConfig, method: Method, cache) -> Callable:
    def load(examples: list[Example]) -> BatchTargets | None:
        if not method.distils:
            return None
        targets = cache.load_targets([ex.id for ex in examples])
        check_targets(method, targets, cache=config.cache, logits=config.teacher_logits)
        return targets_to_tensors(targets, method, m=config.m, logits=config.teacher_logits,
                                  seed=config.seed)
    return load


def make_projections(student, cache, method: Method) -> Projections:
    dims = cache.manifest.get("dims", {}) if cache is not None else {}
    return Projections(student.hidden_size,
                       image_dim=dims.get("image") if method.vision else None,
                       text_dim=dims.get("text") if (method.text or method.words) else None,
                       words=method.words)


class RegionLoader:
    """Region features for a batch's images, read once per image and kept in memory."""

    def __init__(self, store) -> None:
        self.store = store
        self.memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, examples: Sequence[Example]) -> RegionInputs:
        from madcache.students.regions import collate_regions

        missing = sorted({ex.image_id for ex in examples} - set(self.memo))
        if missing:
            self.memo.update(self.store.load(missing))
        return collate_regions([self.memo[ex.image_id] for ex in examples])


def region_loader(path: str | None) -> RegionLoader:
    from madcache.students.regions import open_regions

    if path is None:
        raise ConfigError("training needs --regions (a region feature store: `madcache regions`)")
    return RegionLoader(open_regions(path))


TASKS = {"vcr": "multiple_choice", "snli-ve": "classification", "vqa": "multilabel"}


def student_defaults(config: TrainConfig, cache, store) -> dict[str, Any]:
    """Student options implied by the data (explicit --student-option values win): the task of
    the dataset, the region feature width, and VQA's answer vocabulary (the cache's)."""
    options: dict[str, Any] = {"region_dim": store.feature_dim}
    if config.dataset in TASKS:
        options["task"] = TASKS[config.dataset]
    vocab = (cache.manifest.get("extra") or {}).get("answer_vocab") if cache is not None else None
    if vocab and "answer_vocab" not in config.student_options:
        options["answers"] = list(vocab)
    return options


def load_eval_examples(config: TrainConfig, split: str, *, sm: bool = False) -> list[Example]:
    from madcache.data import read_examples

    examples = read_examples(config.dataset, config.root, split, **config.read_options).examples
    if sm:
        from madcache.data.sm import shortcut_mitigate

        examples = shortcut_mitigate(examples)
    return examples


def _cache_order(examples: list[Example], cache) -> list[Example]:
    """`examples` in the cache's storage order (whole shards read in sequence when streaming)."""
    if cache is None:
        return examples
    rank = {eid: i for i, eid in enumerate(cache.example_ids())}
    return sorted(examples, key=lambda ex: rank.get(ex.id, len(rank)))


def _source(examples: list[Example], load: Callable, chunk_size: int | None) -> DataSource:
    size = chunk_size or max(len(examples), 1)
    chunks = [list(range(i, min(i + size, len(examples)))) for i in range(0, len(examples), size)]
    return DataSource(examples, chunks or [[]], load)


# ----------------------------------------------------------------------------- the step

def task_loss(student, logits: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
    """Cross-entropy over choices/classes; VQA: BCE against the soft answer scores."""
    if student.task == "multilabel":
        target = torch.zeros_like(logits)
        index = {a: i for i, a in enumerate(student.answers)}
        for b, ex in enumerate(examples):
            for answer, value in (ex.answer_scores or {}).items():
                if answer in index:
                    target[b, index[answer]] = value
        return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
    labels = torch.tensor([ex.label for ex in examples], device=logits.device)
    return F.cross_entropy(logits, labels)


def student_word_features(out: StudentOutput, targets: BatchTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """f_st(w): the mean of the student's sub-token outputs over each selected word's span."""
    from madcache.students.tokens import pool_token_spans

    return pool_token_spans(out.text_tokens, out.token_spans, targets.word_span, targets.word_mask)


def loss_step(setup: Setup, examples: Sequence[Example], targets: BatchTargets | None,
              regions: RegionInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """One task-stage loss: L_task, plus MD (w) or MAD (w', CW per instance) terms."""
    method, proj, config = setup.method, setup.projections, setup.config
    out = setup.student(setup.student.prepare(examples, regions))
    task = task_loss(setup.student, out.logits, examples)
    if not method.distils:
        return task, {"task": task.item()}
    vision = vision_term(targets.image, proj.vision(out.image_token)) if method.vision else None
    text = text_term(targets.text_eos, proj.text(out.cls_token)) if method.text else None
    words = None
    if method.words:
        feat, mask = student_word_features(out, targets)
        words = word_term(targets.word_feat, proj.word(feat), mask & targets.word_mask)
    weight = method.weight(w=config.w, w_prime=config.resolved_w_prime)
    if method.confidence:
        student_logits = out.logits
        if targets.candidates is not None:
            student_logits = out.logits.gather(1, targets.candidates.clamp(min=0))
        weights = confidence_weights(targets.logits, student_logits, weight)
        loss = mad_loss(task, vision, text, words, weights=weights)
    elif method.adaptive:
        loss = mad_loss(task, vision, text, words, weights=weight)
    else:
        loss = md_loss(task, vision, text, w=weight)
    parts = {"task": task.item(), "loss": loss.item()}
    for name, term in (("dv", vision), ("dt", text), ("dwt", words)):
        if term is not None:
            parts[name] = term.mean().item()
    return loss, parts


def af_step(setup: Setup, examples: Sequence[Example], targets: BatchTargets | None,
            regions: RegionInputs, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """One adaptive-finetuning loss: MLM + ITM (no labels) + w (L_dv + L_dt)."""
    method, proj = setup.method, setup.projections
    inputs = setup.student.prepare(examples, regions)
    pretrain = setup.student.pretrain_losses(inputs, generator)
    vision = text = None
    if method.vision or method.text:
        out = setup.student(inputs)
        vision = vision_term(targets.image, proj.vision(out.image_token)) if method.vision else None
        text = text_term(targets.text_eos, proj.text(out.cls_token)) if method.text else None
    loss = af_loss(pretrain, vision, text, w=setup.config.w)
    return loss, {"loss": loss.item(), **{k: v.item() for k, v in pretrain.items()}}


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainerState:
    """Where training is: resumable from `trainer_state.json` + `checkpoint.safetensors`."""

    stage: str = "af"                 # "af" | "task" | "done"
    stage_step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def stages(setup: Setup) -> list[tuple[str, DataSource, int]]:
    """(name, data, steps) of each stage: AF (when af_epochs > 0), then the task."""
    config, out = setup.config, []
    if config.af_epochs and setup.af_source is not None:
        out.append(("af", setup.af_source,
                    config.af_epochs * setup.af_source.steps_per_epoch(config.batch_size)))
    per_epoch = setup.task_source.steps_per_epoch(config.batch_size)
    out.append(("task", setup.task_source,
                config.max_steps if config.max_steps is not None else config.epochs * per_epoch))
    return out


def lr_at(step: int, total: int, *, base: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of `total` steps, then linear decay to 0."""
    warm = int(round(warmup * total))
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(setup: Setup) -> torch.optim.AdamW:
    """AdamW over student + projections; no weight decay on biases and norms (ndim < 2)."""
    params = [p for p in _trainables(setup) if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": setup.config.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=setup.config.lr)


def _trainables(setup: Setup) -> list[torch.nn.Parameter]:
    return list(setup.student.parameters()) + list(setup.projections.parameters())


def iterate(source: DataSource, *, seed: int, stage: str, batch_size: int,
            start: int) -> Iterator[tuple[list[Example], BatchTargets | None]]:
    """The stage's batches from step `start` on, epoch after epoch (a pure function of seed)."""
    per_epoch = source.steps_per_epoch(batch_size)
    epoch, skip = divmod(start, per_epoch)
    while True:
        for ci, rows in epoch_order(source, seed=seed, stage=stage, epoch=epoch,
                                    batch_size=batch_size)[skip:]:
            chunk = source.chunk(ci)
            targets = None if chunk.targets is None else chunk.targets.rows(rows)
            yield [chunk.examples[i] for i in rows.tolist()], targets
        epoch, skip = epoch + 1, 0


def train(setup: Setup) -> dict[str, Any]:
    """Run (or resume) all stages, then validate and write metrics.json. Returns the metrics."""
    config, run_dir = setup.config, Path(setup.config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    state, generator = TrainerState(stage=stages(setup)[0][0]), torch.Generator()
    generator.manual_seed(config.seed)
    optimizer = make_optimizer(setup)
    if config.resume and (run_dir / TRAINER_STATE).exists():
        state = load_checkpoint(run_dir, setup, optimizer, generator)
    for name, source, total in stages(setup):
        if _stage_done(state.stage, name):
            continue
        if state.stage != name:
            state.stage, state.stage_step, optimizer = name, 0, make_optimizer(setup)
        run_stage(setup, state, optimizer, generator, source, total)
        record(state, validate(setup) if name == "task" else None)
    state.stage = "done"
    save_checkpoint(run_dir, setup, state, optimizer, generator)
    setup.save_student(setup.student, run_dir / STUDENT_DIR)
    metrics = run_metrics(setup, state)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def run_stage(setup: Setup, state: TrainerState, optimizer: torch.optim.Optimizer,
              generator: torch.Generator, source: DataSource, total: int) -> None:
    """Train one stage from `state.stage_step` to `total` steps."""
    config = setup.config
    setup.student.train()
    batches = iterate(source, seed=config.seed, stage=state.stage, batch_size=config.batch_size,
                      start=state.stage_step)
    bar = tqdm(total=total, initial=state.stage_step, desc=f"{state.stage} ({config.method})",
               disable=None)
    while state.stage_step < total:
        examples, targets = next(batches)
        targets = None if targets is None else targets.to(config.device)
        regions = _to_device(setup.regions(examples), config.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.stage_step, total, base=config.lr, warmup=config.warmup)
        if state.stage == "af":
            loss, parts = af_step(setup, examples, targets, regions, generator)
        else:
            loss, parts = loss_step(setup, examples, targets, regions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.stage_step += 1
        state.global_step += 1
        state.loss_sum += loss.item()
        state.loss_count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        _periodic(setup, state, optimizer, generator, total)
    bar.close()


def _periodic(setup: Setup, state: TrainerState, optimizer, generator, total: int) -> None:
    config, step = setup.config, state.stage_step
    if state.stage == "task" and config.eval_every and step % config.eval_every == 0 \
            and step < total:
        record(state, validate(setup))
    if config.checkpoint_every and state.global_step % config.checkpoint_every == 0:
        save_checkpoint(Path(config.out), setup, state, optimizer, generator)


def record(state: TrainerState, evaluation: dict[str, float] | None) -> None:
    """Append the mean loss since the last record (and a validation result) to the history."""
    entry = {"stage": state.stage, "step": state.stage_step, "global_step": state.global_step,
             "loss": state.loss_sum / max(state.loss_count, 1)}
    if evaluation is not None:
        entry["eval"] = evaluation
    state.history.append(entry)
    state.loss_sum, state.loss_count = 0.0, 0


def validate(setup: Setup) -> dict[str, float] | None:
    if not setup.eval_examples:
        return None
    logits = predict_logits(setup.student, setup.eval_examples, setup.config,
                            regions=setup.eval_regions or setup.regions)
    return score(setup.config.dataset, setup.eval_examples, logits,
                 getattr(setup.student, "answers", None))


@torch.no_grad()
def predict_logits(student, examples: Sequence[Example], config: TrainConfig, *,
                   regions: Callable[[Sequence[Example]], RegionInputs] | None = None) -> torch.Tensor:
    """The student's logits for `examples`, in order (eval mode; train mode restored)."""
    regions = regions or region_loader(config.eval_regions or config.regions)
    was_training = student.training
    student.eval()
    out = []
    for i in range(0, len(examples), config.batch_size):
        batch = examples[i:i + config.batch_size]
        inputs = student.prepare(batch, _to_device(regions(batch), config.device))
        out.append(student(inputs).logits.float().cpu())
    student.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def run_metrics(setup: Setup, state: TrainerState) -> dict[str, Any]:
    """metrics.json (docs/architecture.md): the history and the final validation."""
    config = setup.config
    final = state.history[-1].get("eval") if state.history else None
    evaluation = {config.eval_split: final} if final is not None else {}
    return {"run": Path(config.out).name, "dataset": config.dataset, "method": config.method,
            "student": config.student, "teachers": setup.teachers,
            "shots": config.per_category, "seed": config.seed, "status": "complete",
            "history": state.history, "eval": evaluation, "provenance": setup.provenance}


def _stage_done(current: str, name: str) -> bool:
    order = ["af", "task", "done"]
    return order.index(current) > order.index(name)


def _to_device(regions: RegionInputs, device: str) -> RegionInputs:
    return RegionInputs(regions.feat.to(device), regions.boxes.to(device), regions.mask.to(device))


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: Path, setup: Setup, state: TrainerState, optimizer, generator) -> None:
    """Student + projections + optimizer tensors + RNG states as safetensors (no pickles);
    scalar state as JSON. Written to temp names, then renamed (the JSON last)."""
    tensors = {f"student.{k}": v for k, v in setup.student.state_dict().items()}
    tensors.update({f"projections.{k}": v for k, v in setup.projections.state_dict().items()})
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in values.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    tmp = run_dir / (CHECKPOINT + ".tmp")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(run_dir / CHECKPOINT)
    payload = {**dataclasses.asdict(state), "optimizer_param_groups": optim["param_groups"]}
    write_json(run_dir / TRAINER_STATE, payload)


def load_checkpoint(run_dir: Path, setup: Setup, optimizer, generator) -> TrainerState:
    """Restore what `save_checkpoint` wrote; returns the trainer state."""
    payload = json.loads((run_dir / TRAINER_STATE).read_text())
    tensors = load_file(str(run_dir / CHECKPOINT))
    setup.student.load_state_dict(_prefixed(tensors, "student."))
    setup.projections.load_state_dict(_prefixed(tensors, "projections."))
    groups = payload.pop("optimizer_param_groups")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _prefixed(tensors, "optim.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    if payload["stage"] != "done":
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    return TrainerState(**payload)


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_run_student(run_dir: str | Path, *, device: str = "cpu"):
    """The inference student of a finished run (projections are not part of it)."""
    from madcache.students import load_student

    return load_student(Path(run_dir) / STUDENT_DIR).to(device)


# ----------------------------------------------------------------------------- provenance

def _cache_digest(cache) -> str | None:
    if cache is None:
        return None
    from madcache.cache.manifest import fingerprint_digest

    return cache.manifest.get("fingerprint_digest") or fingerprint_digest(cache.manifest)


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train a student as `config` says and write the run directory; returns metrics.json."""
    return train(setup(config))
