"""The CPU side of extraction: jobs that decode images, tokenise texts and score YAKE keywords.

Jobs run in DataLoader worker processes (`workers` > 0; on CUDA by default one per core but one,
`preprocess_workers`) while the main process runs the teacher
forward on earlier jobs: the loader keeps `prefetch_factor` jobs per worker in flight, so the next
batches are ready when the model finishes. The job stream is a *sampler* consumed lazily in the
main process, so shard plans (and VQA's answer prefiltering) are built just ahead of their jobs.
Everything a worker holds is picklable: the teachers' `image_transform()` / `text_processor()`
callables, never a model.

The forward runs in micro-batches of `forward_batch` rows cut from each shard's list of images or
texts at fixed offsets (0, F, 2F, ...), and every micro-batch is tokenised on its own. A job holds
whole micro-batches (its size is `batch_size` rounded up to a multiple of F), so what a teacher
sees in one forward, shapes and padding included, depends on the shard and F but never on
`--batch-size`: the cached values do not either (docs/extraction.md, "Batch size").
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from madcache.core.errors import CacheError, DataError, DataFileNotFoundError, MadcacheError
from madcache.data.paths import safe_join
from madcache.data.records import Text
from madcache.extraction.images import ImageDecode, read_encoded
from madcache.extraction.plan import ShardPlan
from madcache.extraction.scores import content_words, yake_word_scores

JobKind = Literal["image", "text", "aux"]


@dataclass(frozen=True)
class Job:
    """One batch of one shard: images (relative paths), scored texts, or prompt texts."""

    shard: int
    kind: JobKind
    start: int  # offset of the batch in the shard's list of that kind
    items: tuple[Any, ...]


def shard_jobs(
    plan: ShardPlan, batch_size: int, *, with_aux: bool, forward_batch: int
) -> list[Job]:
    """A shard's jobs in the order the main process consumes them; each job is whole
    micro-batches of `forward_batch` rows."""
    size = job_size(batch_size, forward_batch)
    lists: list[tuple[JobKind, Sequence[Any]]] = [("image", plan.image_paths), ("text", plan.texts)]
    if with_aux:
        lists.append(("aux", plan.aux_texts))
    return [
        Job(plan.index, kind, start, tuple(items[start : start + size]))
        for kind, items in lists
        for start in range(0, len(items), size)
    ]


def job_size(batch_size: int, forward_batch: int) -> int:
    """`batch_size` rounded up to whole micro-batches."""
    return -(-batch_size // forward_batch) * forward_batch


def micro_batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@dataclass(frozen=True)
class YakeSettings:
    max_ngram: int = 3
    top: int = 20
    language: str = "en"

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "yake",
            "n": self.max_ngram,
            "top": self.top,
            "language": self.language,
            "word_score": "max over keywords of 1 / (1 + score)",
            "non_content": "stopwords (yake's list) and punctuation-only words score 0",
        }


class Preprocessor:
    """Turns a `Job` into model inputs. Runs in worker processes (picklable).

    `image_decode` (docs/extraction.md, "The image path"): `gpu` delivers each image once,
    encoded (`images.read_encoded`), for the main process to decode and transform on the
    extraction device; every other path delivers each teacher's pixels, the paths differing only
    in the `image_transforms` given (`images.worker_transform`).
    """

    def __init__(
        self,
        root: Path,
        *,
        image_transforms: dict[str, Callable[[Any], torch.Tensor]],
        text_processors: dict[str, Callable[[Sequence[Text]], Any]],
        aux_processors: dict[str, Callable[[Sequence[Text]], Any]],
        yake: YakeSettings,
        forward_batch: int,
        image_decode: ImageDecode = "exact",
    ) -> None:
        self.root = Path(root)
        self.image_decode = image_decode
        self.image_transforms = image_transforms
        self.text_processors = text_processors
        self.aux_processors = aux_processors
        self.yake = yake
        self.forward_batch = forward_batch

    def __call__(self, job: Job) -> dict[str, Any]:
        """Model inputs per teacher key, as a list with one entry per micro-batch."""
        if job.kind == "image":
            return self.images(job.items)
        processors = self.text_processors if job.kind == "text" else self.aux_processors
        chunks = micro_batches(job.items, self.forward_batch)
        out: dict[str, Any] = {
            "tokens": {key: [fn(chunk) for chunk in chunks] for key, fn in processors.items()}
        }
        if job.kind == "text":
            out["yake"] = [
                yake_word_scores(
                    t, max_ngram=self.yake.max_ngram, top=self.yake.top, language=self.yake.language
                )
                for t in job.items
            ]
            out["content"] = [content_words(t, self.yake.language) for t in job.items]
        return out

    def images(self, paths: Sequence[str]) -> dict[str, Any]:
        """Decode each image once, then apply every teacher's transform (`gpu`: read each
        image once, for the main process)."""
        if self.image_decode == "gpu":
            encoded = [read_encoded(self.root, path) for path in paths]
            return {"encoded": micro_batches(encoded, self.forward_batch)}
        decoded = [load_rgb(self.root, path) for path in paths]
        return {
            "pixels": {
                key: [
                    torch.stack([transform(img) for img in chunk])
                    for chunk in micro_batches(decoded, self.forward_batch)
                ]
                for key, transform in self.image_transforms.items()
            }
        }


def load_rgb(root: Path, relative: str):
    """A dataset image as an RGB PIL image; a missing or broken file names its path. An image
    decoded as RGB (most JPEGs) is returned as decoded: `convert("RGB")` would copy it whole,
    a tenth of extraction's image time on full-size frames (docs/performance.md)."""
    from PIL import Image, UnidentifiedImageError

    path = safe_join(root, relative)
    try:
        with Image.open(path) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except FileNotFoundError:
        raise DataFileNotFoundError("image not found", file=path) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"image cannot be decoded ({exc})", file=path) from None


class JobDataset(torch.utils.data.Dataset):
    """Map-style dataset whose 'indices' are the jobs themselves (see `JobStream`)."""

    def __init__(self, preprocessor: Preprocessor) -> None:
        self.preprocessor = preprocessor

    def __getitem__(self, job: Job) -> tuple[Job, dict[str, Any] | WorkerFailure]:
        try:
            return job, self.preprocessor(job)
        except MadcacheError as exc:
            return job, WorkerFailure(type(exc), str(exc))


@dataclass(frozen=True)
class WorkerFailure:
    """A `MadcacheError` raised in a worker process, returned as data: the main process raises
    it with the worker's one-line message (a DataLoader would re-raise it wrapped in the
    worker's traceback)."""

    kind: type
    message: str

    def reraise(self) -> None:
        try:
            error = self.kind(self.message)
        except TypeError:  # an error class whose constructor takes more than a message
            error = MadcacheError(self.message)
        raise error


def payload_of(received: dict[str, Any] | WorkerFailure) -> dict[str, Any]:
    """A job's payload as the loader delivered it; a worker's failure is raised here."""
    if isinstance(received, WorkerFailure):
        received.reraise()
    return received


class JobStream(torch.utils.data.Sampler):
    """Yields the jobs of each pending shard, planning a shard only when its jobs are due.

    `plan_shard(index)` runs in the main process (it may use a model: VQA prefiltering) and
    registers the plan where the consumer finds it; it returns None for a shard to skip (another
    writer holds or has committed it).
    """

    def __init__(
        self,
        shard_indices: Iterable[int],
        plan_shard: Callable[[int], ShardPlan | None],
        batch_size: int,
        *,
        with_aux: bool,
        forward_batch: int,
    ) -> None:
        self.shard_indices = list(shard_indices)
        self.plan_shard = plan_shard
        self.batch_size = batch_size
        self.with_aux = with_aux
        self.forward_batch = forward_batch

    def __iter__(self) -> Iterator[Job]:
        for index in self.shard_indices:
            plan = self.plan_shard(index)
            if plan is not None:
                yield from shard_jobs(
                    plan, self.batch_size, with_aux=self.with_aux, forward_batch=self.forward_batch
                )


def keep_as_is(sample: Any) -> Any:
    """DataLoader collate_fn: jobs are already batches."""
    return sample


def preprocess_workers(
    requested: int | None,
    device: str,
    *,
    cores: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """`--workers`, else by default: on CUDA, this process's share of the usable cores
    (torchrun's `LOCAL_WORLD_SIZE` processes per node share them) less one for the process
    feeding the GPU: per example, decoding and resizing a full-size frame cost the CPU more
    than the GPU's forward (docs/performance.md). On the CPU 0: the forward has the cores."""
    if requested is not None:
        return requested
    if not device.startswith("cuda"):
        return 0
    if cores is None:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    per_node = max(int(environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(cores // per_node - 1, 0)


@contextlib.contextmanager
def worker_deaths(out: object) -> Iterator[None]:
    """Around the use of a job loader: a worker process that died (the kernel killed it: out of
    memory?) is one `CacheError` line naming the cache `out`, not torch's RuntimeError (raised
    from its SIGCHLD handler, anywhere in the loop) or a broken pipe to the worker."""
    try:
        yield
    except (RuntimeError, ConnectionError, EOFError) as exc:
        if isinstance(exc, RuntimeError) and "DataLoader worker" not in str(exc):
            raise
        # torch's SIGCHLD handler would raise again for the dead worker (anywhere, even while
        # this line is printed); the extraction is over, so the signal goes back to its default
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise CacheError(
            f"extracting into {out}: a data-loading worker process died ("
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}); out of "
            "memory? Rerun the same command (committed shards are kept), with "
            "fewer --workers or a smaller --batch-size"
        ) from None


def make_loader(
    preprocessor: Preprocessor, stream: JobStream, *, workers: int, pin_memory: bool
) -> torch.utils.data.DataLoader:
    extra = {"prefetch_factor": 4} if workers > 0 else {}
    return torch.utils.data.DataLoader(
        JobDataset(preprocessor),
        sampler=stream,
        batch_size=None,
        collate_fn=keep_as_is,
        num_workers=workers,
        pin_memory=pin_memory,
        **extra,
    )
