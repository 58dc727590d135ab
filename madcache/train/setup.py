"""`setup(config)`: read the data, the low-shot split and the cache (fingerprint checked), build
the student and the projections. Everything `madcache.train.loop.train` needs, in one `Setup`."""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import madcache
from madcache.cache.manifest import cache_digest
from madcache.core.errors import ConfigError
from madcache.core.finite import check_finite
from madcache.core.io import file_sha256, git_commit
from madcache.data.base import CLASSIFICATION, DATASETS, MULTIPLE_CHOICE
from madcache.data.records import Example, image_order
from madcache.data.stored import field_of
from madcache.method.losses import Projections, projection_widths
from madcache.method.methods import AF, TASK, Method, check_targets, get_method
from madcache.students.base import RegionInputs
from madcache.students.visual import loader_for, region_store_for, visual_loader
from madcache.train.config import TrainConfig
from madcache.train.data import (
    BatchTargets,
    DataSource,
    LabelFreeViews,
    targets_to_tensors,
    word_chooser,
)
from madcache.train.distributed import main_first


@dataclass
class Setup:
    """Everything `train` needs, built by `setup(config)` (tests build one from stand-ins)."""

    config: TrainConfig
    method: Method
    student: Any
    projections: Projections
    task_source: DataSource
    af_source: DataSource | None
    # visual inputs of a batch; a source with `chunk(examples) -> Callable` (RegionLoader) serves
    # a training chunk from one read of the chunk's images (train/stream.py)
    regions: Callable[[Sequence[Example]], RegionInputs]
    eval_examples: list[Example]
    provenance: dict[str, Any]
    save_student: Callable[[Any, Path], None]
    teachers: Any = None  # the cache manifest's teacher names
    eval_regions: Callable[[Sequence[Example]], RegionInputs] | None = None  # None: `regions`
    # (student, projections, regions) -> metrics.json 'transfer' (train/transfer.py), or None
    transfer: Callable[[Any, Any, Any], dict] | None = None


def setup(config: TrainConfig) -> Setup:
    """Read the data, the low-shot split, the cache (fingerprint checked) and build the student."""
    from madcache.students import build_student, save_student

    method = get_method(config.method)
    torch.manual_seed(config.seed)
    whole = config.split_file is None and config.per_category is None
    subset, split, views = read_training_data(config, method)
    cache = open_checked_cache(config, method)
    store = region_store_for(config.student, config.regions)  # None: the student reads pixels
    options = student_defaults(config, cache, store) | config.student_options
    student = build_student(config.student, **options).to(config.device)
    regions = visual_loader(student, root=config.root, store=store)
    task_source = _source(
        subset,
        target_loader(config, method.only(TASK), cache),
        config.chunk_size if whole else None,
    )
    af_source = None
    if views is not None:  # AF: the whole training split, label-free
        original_id = views.original_ids
        af_source = _source(
            views,
            target_loader(config, method.only(AF), cache, key=lambda ex: original_id[ex.id]),
            config.chunk_size,
        )
    eval_examples = load_eval_examples(config, config.eval_split) if config.eval_split else []
    eval_regions = (
        loader_for(student, root=config.root, regions=config.eval_regions)
        if config.eval_regions
        else regions
    )
    probe = transfer_probe(config, method, cache, task_source.examples, eval_examples)
    stages = [(method.only(TASK), field_of(task_source.examples, "id"))]
    if views is not None:
        stages.append((method.only(AF), views.original_ids.values()))
    shown = [task_source.examples, *([views] if views is not None else [])]
    shown += [eval_examples] if config.eval_regions is None else []
    image_ids = {image for examples in shown for image in field_of(examples, "image_id")}
    reads = verify_reads(cache, stages, store, image_ids)
    return Setup(
        config=config,
        method=method,
        student=student,
        projections=make_projections(student, cache, method).to(config.device),
        task_source=task_source,
        af_source=af_source,
        regions=regions,
        eval_examples=eval_examples,
        eval_regions=eval_regions,
        provenance={
            "cache_fingerprint": None if cache is None else cache_digest(cache.manifest),
            "verified_reads": reads,
            **record_split(config, split),
            **numerics(),
            "git_commit": git_commit(),
            "madcache_version": madcache.__version__,
        },
        save_student=save_student,
        transfer=probe,
        teachers=None if cache is None else cache.manifest.get("teachers"),
    )


def verify_reads(
    cache, stages: list[tuple[Method, Iterable[str]]], store, image_ids: set[str]
) -> dict[str, dict[str, str]]:
    """Before the first step, check every shard the run will read against the sha256s its
    extraction recorded (madcache/cache/verified.py): the cache's shards holding each stage's
    example ids (the arrays that stage needs), and the region store's holding `image_ids`.
    What was verified, for inputs.json."""
    from madcache.cache.gather import arrays_for
    from madcache.students.regions import ARRAYS

    reads: dict[str, dict[str, str]] = {}
    if cache is not None:
        names = {n for e in cache.shards for n in e.get("arrays", {})}
        for stage, ids in stages:
            if stage.distils:
                cache.verified.ahead(ids, arrays_for(stage.needs, names) | {"example_id"})
        reads["cache"] = cache.verified.record()
    if store is not None:
        store.check_holds(sorted(image_ids))  # before training, not at the first eval
        store.cache.verified.ahead(image_ids, ARRAYS)
        reads["regions"] = store.cache.verified.record()
    return reads


def pin_threads(threads: int) -> None:
    """Run torch's CPU kernels on exactly `threads` threads. The count decides how reductions
    are split, so a count that followed the machine (its cores, a sweep's jobs) would change
    the last bits of every result."""
    torch.set_num_threads(threads)


def numerics() -> dict[str, Any]:
    """What decides the floating-point path besides the settings (inputs.json)."""
    return {
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def label_free_examples(
    dataset: str, examples: Iterable[Example]
) -> tuple[LabelFreeViews, Mapping[str, str]]:
    """The examples adaptive finetuning trains on, each as its dataset's `label_free` view (no
    label nor any field derived from one; VCR without the QA->R texts that hold the correct
    answer), under an opaque id `af:<i>`, and the map from those ids back to the original
    ones, which only target loading reads (train/data.py). In memory; `read_training_data`
    keeps a whole split's views on disk."""
    view = DATASETS.get(dataset).label_free
    shown = [seen for seen in map(view, examples) if seen is not None]
    views = LabelFreeViews(shown, [ex.id for ex in shown])
    return views, views.original_ids


def read_training_data(
    config: TrainConfig, method: Method
) -> tuple[Sequence[Example], Any, LabelFreeViews | None]:
    """The task stage's examples (a whole split in image order, or the low-shot subset), the
    split (`training_subset`), and adaptive finetuning's label-free views of the whole split in
    image order (None without an AF stage). Image order for every method, cache or not: the
    same batches (docs/training.md).

    The split streams from the reader (`iter_examples`); what is trained on whole (the split,
    the AF views) is written to disk as it passes (data/stored.py: unnamed files in the run
    folder, offsets and ids in memory), never held as `Example`s. One pass for a whole-split
    run; a low-shot run's first pass (`training_subset`'s whole read) also writes the AF
    views, so MAD reads its split twice, as MD does."""
    from madcache.data import iter_examples
    from madcache.data.stored import ExampleWriter

    whole = config.split_file is None and config.per_category is None
    af = method.stage(AF) is not None
    folder = None
    if whole or af:
        folder = Path(config.out)
        folder.mkdir(parents=True, exist_ok=True)
    everything = ExampleWriter(folder) if whole else None
    shown = ExampleWriter(folder) if af else None
    view = DATASETS.get(config.dataset).label_free

    def writing(examples: Iterable[Example]) -> Iterator[Example]:
        for example in examples:
            if everything is not None:
                everything.add(example)
            seen = view(example) if shown is not None else None
            if seen is not None:
                shown.add(seen)  # under the example's id (LabelFreeViews gives it af:<i>)
            yield example

    def read(only: Collection[str] | None = None) -> Iterator[Example]:
        examples = iter_examples(
            config.dataset, config.root, config.split, only=only, **config.read_options
        )
        return examples if only is not None else writing(examples)  # the one whole read

    if everything is not None:
        deque(read(), maxlen=0)
        subset, split = everything.finish().in_image_order(), None
    else:
        subset, split = training_subset(config, read)
    views = None
    if shown is not None:
        in_order = shown.finish().in_image_order()
        views = LabelFreeViews(in_order, in_order.ids)
    return subset, split, views


def training_subset(
    config: TrainConfig, examples: Sequence[Example] | Callable[..., Iterable[Example]]
) -> tuple[list[Example], Any]:
    """The low-shot subset and its split (from `split_file`, or sampled per category with
    `seed`; None: all examples). A sampled split is saved by `record_split`, once every check
    passed, so a refused run leaves nothing in its run folder.

    `examples`: the split, or `read(only=None)`, which reads it anew at each call (`only`: just
    the examples with these ids, the other records passed over unchecked). Then the split is
    never kept whole: a sampled split is drawn from a slim index of a whole read
    (`lowshot.index`: the same ids in the same order), then only the drawn examples are read;
    a split file's examples come from one whole read."""
    from madcache.data import lowshot

    read = examples if callable(examples) else lambda only=None: examples
    if config.split_file is not None:
        split = lowshot.Split.load(config.split_file)
        drawn_with = split.params.get("seed")
        if drawn_with is not None and drawn_with != config.seed:
            raise ConfigError(
                f"{config.split_file} was drawn with seed {drawn_with} but the run "
                f"has --seed {config.seed}: pass --seed {drawn_with}, or the split "
                f"file of seed {config.seed}"
            )
    elif config.per_category is not None:
        split = lowshot.sample_per_category(
            lowshot.index(read()), k=config.per_category, seed=config.seed
        )
    else:
        return list(read()), None
    wanted = set(split.ids)
    checked = config.split_file is None  # the index's read checked every record
    subset = [ex for ex in read(wanted if checked else None) if ex.id in wanted]
    if len(subset) != len(wanted):
        unknown = sorted(wanted - {ex.id for ex in subset})
        raise ConfigError(
            f"{config.split_file or 'the sampled split'}: {len(unknown)} of its "
            f"{len(wanted)} ids are not in the {config.dataset} "
            f"{getattr(config, 'split', 'training')} split (e.g. "
            f"{', '.join(map(repr, unknown[:3]))}); was it sampled from this split?"
        )
    if checked:  # the same ids, in the same (reader) order, as the second pass's strings: the
        # index's few hundred, scattered over the first pass's memory, would keep it from the OS
        split.ids = [ex.id for ex in subset]
    return subset, split


def record_split(config: TrainConfig, split: Any) -> dict[str, Any]:
    """The split's file and digest for the run's inputs; a sampled split is written into the
    run folder first (under torchrun by rank 0, the others read it)."""
    if split is None:
        return {"split_file": None, "split_digest": None, "split_shots": None}
    path = config.split_file
    if path is None:
        path = str(Path(config.out) / "split.json")
        with main_first() as where:
            if where.is_main:
                Path(config.out).mkdir(parents=True, exist_ok=True)
                split.save(path)
    return {
        "split_file": path,
        "split_digest": file_sha256(path),
        "split_shots": split.params.get("per_category"),
    }


def open_checked_cache(config: TrainConfig, method: Method):
    """Open the cache (None for a method that needs none without --cache) and refuse one built
    for other data: its dataset fingerprint must match the dataset/split/text rendering in use."""
    if config.cache is None:
        if method.distils:
            raise ConfigError(f"method '{method.name}' needs --cache")
        return None
    return open_split_cache(config.cache, config, config.split)


def open_split_cache(path: str, config: TrainConfig, split: str):
    """The cache at `path`, refused unless it was built for `split` of the run's dataset (files,
    read options and text rendering: its dataset fingerprint)."""
    from madcache.cache.fingerprint import dataset_fingerprint
    from madcache.cache.reader import open_cache

    cache = open_cache(path)
    expected = dataset_fingerprint(config.dataset, config.root, split, config.read_options)
    cached_options = cache.fingerprint.get("dataset", {}).get("read_options", {})
    options = {k: v for k, v in expected["read_options"].items() if k not in TEXT_NEUTRAL_OPTIONS}
    options |= {k: v for k, v in cached_options.items() if k in TEXT_NEUTRAL_OPTIONS}
    cache.check_compatible({"dataset": {**expected, "read_options": options}})
    return cache


def transfer_probe(
    config: TrainConfig,
    method: Method,
    cache,
    train_examples: list[Example],
    eval_examples: list[Example],
) -> Callable[[Any, Any, Any], dict] | None:
    """`probe(student, projections, regions) -> metrics.json 'transfer'` for a distilling run
    with an eval cache (train/transfer.py), else None. Its targets are read now, so a wrong
    eval cache is refused before the first step."""
    from madcache.train.transfer import HELD_OUT, transfer_report

    needs = tuple(n for n in ("image", "text_eos") if n in method.needs)
    path = config.eval_caches.get(config.eval_split) if config.eval_split else None
    if path is None or not needs:
        return None
    held_out = image_order(eval_examples)[:HELD_OUT]
    targets = tensors_of(
        open_split_cache(path, config, config.eval_split).load_targets(
            [ex.id for ex in held_out], needs=needs
        )
    )
    trained = tensors_of(
        cache.load_targets([ex.id for ex in train_examples[:HELD_OUT]], needs=needs)
    )
    means = {
        n: getattr(trained, n).reshape(-1, getattr(trained, n).shape[-1]).mean(dim=0) for n in needs
    }
    multiple_choice = DATASETS.get(config.dataset).task == MULTIPLE_CHOICE

    def probe(student, projections, regions) -> dict:
        return transfer_report(
            student,
            projections,
            held_out,
            targets,
            train_means=means,
            regions=regions,
            batch_size=config.batch_size,
            device=config.device,
            multiple_choice=multiple_choice,
        )

    return probe


def tensors_of(targets) -> BatchTargets:
    """The image and text EOS targets as float32 tensors (None where not loaded)."""

    def tensor(array):
        return None if array is None else torch.from_numpy(np.asarray(array, dtype=np.float32))

    return BatchTargets(image=tensor(targets.image), text_eos=tensor(targets.text_eos))


# reader options that do not change any text a teacher saw (extraction sets check_files=True)
TEXT_NEUTRAL_OPTIONS = ("check_files",)


def target_loader(
    config: TrainConfig,
    method: Method,
    cache,
    key: Callable[[Example], str] = operator.attrgetter("id"),
) -> Callable:
    """Loads the targets `method` (one stage of the run's method) needs, as tensors; `key`
    gives an example's id in the cache."""

    def load(examples: list[Example]) -> BatchTargets | None:
        if not method.distils:
            return None
        ids = [key(ex) for ex in examples]
        targets = cache.load_targets(
            ids,
            needs=method.needs,  # only what the stage reads
            choose_words=word_chooser(method, m=config.m, seed=config.seed),
        )
        check_targets(method, targets, cache=config.cache, logits=config.teacher_logits)
        tensors = targets_to_tensors(
            targets, method, m=config.m, logits=config.teacher_logits, seed=config.seed
        )
        check_finite(
            vars(tensors),
            ids,
            source=f"cache {config.cache}",
            fix=f"run `madcache cache verify {config.cache}` and re-extract",
        )
        return tensors

    return load


def make_projections(student, cache, method: Method) -> Projections:
    """The projections the method's terms train, to the cache's teacher widths."""
    dims = cache.manifest.get("dims", {}) if cache is not None else {}
    return Projections(student.hidden_size, projection_widths(method.terms, dims))


def student_defaults(config: TrainConfig, cache, store) -> dict[str, Any]:
    """Student options implied by the data (explicit --student-option values win): the task of
    the dataset (and a classifier's number of classes), the region feature width (region
    students), and VQA's answer vocabulary (the cache's)."""
    spec = DATASETS.get(config.dataset)
    options: dict[str, Any] = {"task": spec.task}
    if store is not None:
        options["region_dim"] = store.feature_dim
    if spec.task == CLASSIFICATION:
        options["num_classes"] = len(spec.label_names)
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


def _source(examples: Sequence[Example], load: Callable, chunk_size: int | None) -> DataSource:
    size = chunk_size or max(len(examples), 1)
    chunks = [range(i, min(i + size, len(examples))) for i in range(0, len(examples), size)]
    return DataSource(examples, chunks or [range(0)], load)
