"""Region features for the student: which boxes, the region store, and batching.

Boxes per image: datasets with per-image metadata (VCR, the demo VCR) give the whole image
followed by the metadata's boxes in object order (so `person1` stays region 1, for every
extractor and released format: region_formats.py); datasets without
boxes (SNLI-VE, VQA without a TSV) use a fixed grid: the whole image, 2x2 and 3x3 cells. At most
`max_regions` regions per image are kept.

The region store is written like the teacher cache (madcache/cache: sharded, atomic, resumable,
a manifest with the extractor fingerprint and the dataset digest), one row per unique image:

| array | shape, dtype |
|---|---|
| `example_id` | [n_img] str, the image id (the cache's row key) |
| `region_offsets` | [n_img + 1] int64 |
| `region_feat` | [n_regions, Dr] float32 |
| `region_boxes` | [n_regions, 4] float32, normalised (x1, y1, x2, y2) |

`open_regions(path).load(image_ids)` reads it back; `collate_regions` pads a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from madcache.cache.gather import ragged_index
from madcache.core.config import check_ranges, config_from_dict, setting
from madcache.core.errors import CacheError, CacheNotFoundError, ConfigError
from madcache.core.finite import check_finite
from madcache.core.io import check_output_location
from madcache.core.progress import PROGRESS_HELP
from madcache.data.records import Example
from madcache.students.base import RegionInputs
from madcache.students.region_extractors import (
    GEOMETRY_DIM,
    ImageItem,
    RegionExtractor,
    box_geometry,
    build_extractor,
    grid_boxes,
)
from madcache.students.region_formats import WHOLE_IMAGE

KIND = "regions"
ARRAYS = ("example_id", "region_offsets", "region_feat", "region_boxes")  # what `load` reads
BOX_RULE = "metadata boxes after the whole image, else grid (1, 2, 3)"

__all__ = [
    "GEOMETRY_DIM",
    "box_geometry",
    "grid_boxes",
    "image_boxes",
    "image_items",
    "RegionsConfig",
    "build_region_store",
    "default_out",
    "open_regions",
    "RegionStore",
    "collate_regions",
]


# ----------------------------------------------------------------------------- boxes


def ground_truth_boxes(root: str | Path, example: Example) -> np.ndarray | None:
    """The normalised metadata boxes of `example`'s image in object order (VCR: object i is
    `person{i+1}` and region i + 1), or None for a dataset without boxes."""
    meta = _metadata(root, example)
    return None if meta is None else _normalised(meta)


def _metadata(root: str | Path, example: Example):
    if example.meta_path is None:
        return None
    from madcache.data.vcr import load_vcr_metadata

    return load_vcr_metadata(root, example)


def _normalised(meta) -> np.ndarray:
    scale = np.array([meta.width, meta.height, meta.width, meta.height], np.float32)
    return np.clip(meta.boxes[:, :4] / scale, 0.0, 1.0).astype(np.float32)


def image_boxes(root: str | Path, example: Example, max_regions: int) -> np.ndarray:
    """Normalised boxes of `example`'s image: [min(R, max_regions), 4], whole image first."""
    boxes = ground_truth_boxes(root, example)
    if boxes is None:
        return grid_boxes()[:max_regions]
    return np.concatenate([WHOLE_IMAGE, boxes])[:max_regions]


def image_items(
    root: str | Path, examples: Sequence[Example], max_regions: int
) -> Iterator[ImageItem]:
    """One item per unique image id, in order of first appearance (boxes read lazily). An image
    with metadata carries the size the metadata gives, which its pixels must have."""
    from madcache.data.paths import safe_join

    first: dict[str, Example] = {}
    for example in examples:
        first.setdefault(example.image_id, example)
    for image_id, example in first.items():
        path = safe_join(root, example.image_path, field="image_path")
        meta = _metadata(root, example)
        if meta is None:
            yield ImageItem(image_id, path, grid_boxes()[:max_regions])
            continue
        gt = _normalised(meta)
        yield ImageItem(
            image_id,
            path,
            np.concatenate([WHOLE_IMAGE, gt])[:max_regions],
            gt,
            size=(meta.width, meta.height),
            size_from=safe_join(root, example.meta_path, field="metadata_fn"),
        )


# ----------------------------------------------------------------------------- writing


def default_out(dataset: str, splits: Sequence[str], extractor: str) -> Path:
    return Path("cache") / dataset / "+".join(splits) / f"regions-{extractor}"


def split_list(split: str | Sequence[str]) -> list[str]:
    """`"train"`, `"train,val"` or `["train", "val"]` -> the splits, in order, once each."""
    parts = split.split(",") if isinstance(split, str) else [p for s in split for p in s.split(",")]
    splits = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not splits:
        raise CacheError("no split given")
    return splits


def region_manifest(
    *,
    dataset: str,
    root: str | Path,
    splits: Sequence[str],
    extractor: RegionExtractor,
    max_regions: int,
    read_options: Mapping[str, Any],
) -> dict[str, Any]:
    from madcache.cache.fingerprint import dataset_fingerprint

    digests = {
        split: dataset_fingerprint(dataset, root, split, dict(read_options)) for split in splits
    }
    return {
        "kind": KIND,
        "dataset": dataset,
        "split": "+".join(splits),
        "num_choices": 0,
        "dims": {"region": extractor.feature_dim},
        "fingerprint": {
            "dataset": digests,
            "regions": {**extractor.fingerprint(), "max_regions": max_regions, "boxes": BOX_RULE},
        },
        "settings": {
            "extractor": extractor.name,
            "max_regions": max_regions,
            "splits": list(splits),
        },
    }


def shard_arrays(
    image_ids: list[str], regions: list[tuple[np.ndarray, np.ndarray]], max_regions: int
) -> dict[str, np.ndarray]:
    feats = [feat[:max_regions] for feat, _ in regions]
    boxes = [box[:max_regions] for _, box in regions]
    counts = np.array([len(f) for f in feats], dtype=np.int64)
    return {
        "example_id": np.array(image_ids, dtype=str),
        "region_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "region_feat": np.concatenate(feats).astype(np.float32),
        "region_boxes": np.concatenate(boxes).astype(np.float32),
    }


# the extractor options `madcache regions` has flags for (RegionsConfig fields)
EXTRACTOR_OPTIONS = ("weights", "backbone", "image_size", "device", "tsv")


@dataclass(frozen=True)
class RegionsConfig:
    """Everything a region store depends on: `build_region_store`'s keywords and the flags of
    `madcache regions` (generated from these fields). `weights`, `backbone`, `image_size`,
    `device` and `tsv` are options of the extractor named (`extractor_options` any other)."""

    dataset: str = setting(names="dataset", help="A registered dataset.")
    root: Path = setting(existing_path=True, help="Dataset root (original files).")
    split: str | list[str] = setting(
        help="A split, or several: train,val (one store for training and validation)."
    )
    extractor: str = setting(
        "boxcrop",
        names="region extractor",
        help="How region features are made: from the images (boxcrop, "
        "backbone) or read from a released format's files (the "
        "others).",
    )
    weights: Path | None = setting(
        None, existing_path=True, help="backbone: local weights (.safetensors / .pt)."
    )
    backbone: str | None = setting(
        None, help="backbone: a timm name or torchvision:NAME [default: resnet50]."
    )
    image_size: int | None = setting(None, minimum=32, help="backbone: input size [224].")
    device: str | None = setting(
        None, help="backbone: auto, cpu, cuda or cuda:N [auto: the GPU when there is one]."
    )
    tsv: Path | None = setting(
        None,
        existing_path=True,
        help="butd-tsv: the bottom-up-attention TSV file (6 or 10 columns).",
    )
    extractor_options: dict[str, Any] = setting(
        factory=dict, flag="extractor-option", help="Another option of the extractor (repeatable)."
    )
    out: str | Path | None = setting(
        None,
        metavar="PATH|s3://BUCKET/PREFIX",
        help="Store directory or object-store URL [default: "
        "cache/<dataset>/<split>/regions-<extractor>]; splits "
        "joined by +.",
    )
    max_regions: int = setting(16, minimum=1, help="Regions kept per image, the whole image first.")
    shard_size: int = setting(256, minimum=1, help="Images per shard.")
    format: Literal["zarr", "hdf5"] = setting("zarr", help="Storage format of the shards.")
    force: bool = setting(False, help="Overwrite a store built with another fingerprint.")
    read_options: dict[str, Any] = setting(
        factory=dict,
        flag="read-option",
        help="A dataset reader option (repeatable), e.g. annotations=FILE for VCR.",
    )
    progress: bool = setting(True, help=PROGRESS_HELP)

    def __post_init__(self) -> None:
        check_ranges(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RegionsConfig:
        """Checked values (`madcache.core.config`): a wrong type names the key."""
        return config_from_dict(cls, values, noun="region store option")

    def extractor_arguments(self) -> dict[str, Any]:
        """The keyword arguments of the extractor: the named options given, and the others."""
        named = {name: getattr(self, name) for name in EXTRACTOR_OPTIONS}
        return {**self.extractor_options, **{k: v for k, v in named.items() if v is not None}}


def build_region_store(**values: Any) -> dict[str, Any]:
    """Extract region features of every image of one or more splits (`"train,val"`: one store
    for training and validation) into a store; resumes a killed run. `values` are the fields of
    `RegionsConfig` (checked; an unknown or mistyped one is a `ConfigError` naming it). Returns a
    summary: path, images, regions, shards written now, shards reused."""
    from tqdm.auto import tqdm

    from madcache.cache.writer import CacheWriter
    from madcache.data import read_examples

    config = RegionsConfig.from_dict(values)
    splits = split_list(config.split)
    path = (
        config.out
        if config.out is not None
        else default_out(config.dataset, splits, config.extractor)
    )
    options = config.extractor_arguments()
    check_output_location(
        path, roots=[config.root], inputs=[options.get("weights"), options.get("tsv")]
    )
    examples = [
        ex
        for split in splits
        for ex in read_examples(config.dataset, config.root, split, **config.read_options).examples
    ]
    extractor = build_extractor(config.extractor, **options)
    # released formats name the files and directories they read
    check_output_location(path, inputs=getattr(extractor, "input_paths", list)())
    manifest = region_manifest(
        dataset=config.dataset,
        root=config.root,
        splits=splits,
        extractor=extractor,
        max_regions=config.max_regions,
        read_options=config.read_options,
    )
    writer = CacheWriter.open(path, manifest=manifest, format=config.format, force=config.force)
    done = writer.completed_shards()
    image_ids = list(dict.fromkeys(ex.image_id for ex in examples))
    by_image = {ex.image_id: ex for ex in reversed(examples)}
    size = config.shard_size
    shards = [image_ids[i : i + size] for i in range(0, len(image_ids), size)]
    bar = tqdm(
        total=len(image_ids),
        desc=f"regions {config.extractor}",
        unit="img",
        disable=not config.progress,
    )
    written = 0
    for index, ids in enumerate(shards):
        if index in done or not claim_unwritten(writer, index):
            bar.update(len(ids))
            continue
        regions = []
        for item in image_items(config.root, [by_image[i] for i in ids], config.max_regions):
            regions.append(extractor.regions(item))
            bar.update(1)
        writer.write_shard(
            index, shard_arrays(ids, regions, config.max_regions), index_columns={"image_id": ids}
        )
        written += 1
    bar.close()
    total = sum(int(e["arrays"]["region_feat"]["shape"][0]) for e in writer.committed_entries())
    summary = {"images": len(image_ids), "regions": total}
    writer.finish(summary=summary)
    return {
        "path": str(path),
        **summary,
        "shards_written": written,
        "shards_reused": len(shards) - written,
    }


def claim_unwritten(writer, index: int) -> bool:
    """Take shard `index` unless another process committed it (waiting while one writes it):
    two `madcache regions` into one store share the work, as extraction ranks do, instead of
    rewriting each other's shards (a shard being rewritten is uncommitted meanwhile)."""
    writer.claim(index, wait=True)
    if writer.is_committed(index):
        writer.release(index)
        return False
    return True


# ----------------------------------------------------------------------------- reading


def open_regions(path: str | Path) -> RegionStore:
    """Open a region store (a directory or an object-store URL) read-only
    (`CacheNotFoundError` if there is none)."""
    from madcache.cache.reader import open_cache

    try:
        cache = open_cache(path)
    except CacheNotFoundError:
        raise CacheNotFoundError(
            f"no region store at {path}: build one with `madcache regions "
            f"--dataset ... --split ... --out {path}`, or check the "
            "path"
        ) from None
    if cache.manifest.get("kind") != KIND:
        raise CacheError(
            f"{path} is not a region store (it is a teacher-target cache?): build "
            "one with `madcache regions`"
        )
    return RegionStore(cache)


class RegionStore:
    """Region features per image id. `load` reads each needed shard once, in order."""

    def __init__(self, cache) -> None:
        self.cache = cache
        self.path = cache.path
        self.manifest = cache.manifest
        self.feature_dim = int(cache.manifest["dims"]["region"])
        self.max_regions = int(cache.manifest["settings"]["max_regions"])
        self._where: dict[str, tuple[int, int]] | None = None

    def __repr__(self) -> str:
        return f"RegionStore({str(self.path)!r}, dim={self.feature_dim})"

    def _locations(self) -> dict[str, tuple[int, int]]:
        if self._where is None:
            table = self.cache.index()
            self._where = {
                i: (int(s), int(r))
                for i, s, r in zip(
                    table.column("example_id").to_pylist(),
                    table.column("shard").to_pylist(),
                    table.column("row").to_pylist(),
                )
            }
        return self._where

    def image_ids(self) -> list[str]:
        return list(self._locations())

    def check_holds(self, image_ids: Iterable[str]) -> None:
        """Refuse image ids the store does not hold (built for another split?)."""
        where = self._locations()
        missing = [i for i in image_ids if i not in where]
        if missing:
            raise CacheError(
                f"{len(missing)} image(s) are not in the region store {self.path} "
                f"(e.g. {', '.join(map(repr, missing[:5]))}): build it for this "
                "dataset split"
            )

    def load(self, image_ids: Iterable[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{image id: (features [R, Dr] float32, normalised boxes [R, 4] float32)}; per shard,
        only the wanted images' rows are read (one batched request, never a read per image)."""
        wanted = list(dict.fromkeys(image_ids))
        self.check_holds(wanted)
        where = self._locations()
        entries = {int(e["index"]): e for e in self.cache.shards}
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for shard in sorted({where[i][0] for i in wanted}):
            self.cache.verified.check(entries[shard], ARRAYS)
            path = self.path / entries[shard]["name"]
            ids = sorted({i for i in wanted if where[i][0] == shard}, key=lambda i: where[i][1])
            offsets = self.cache.backend.read(path, ["region_offsets"])["region_offsets"]
            starts = np.array([offsets[where[i][1]] for i in ids], dtype=np.int64)
            counts = np.array([offsets[where[i][1] + 1] for i in ids], dtype=np.int64) - starts
            rows = ragged_index(starts, counts)  # sorted: images in row order
            arrays = self.cache.backend.read_rows(path, {"region_feat": rows, "region_boxes": rows})
            check_finite(
                arrays,
                np.repeat(ids, counts).tolist(),
                source=f"region store {path}",
                fix=f"run `madcache cache verify {self.path}` and rebuild the store",
            )
            ends = np.cumsum(counts)
            for image_id, end, count in zip(ids, ends, counts):
                piece = slice(int(end - count), int(end))
                out[image_id] = (
                    torch.from_numpy(np.array(arrays["region_feat"][piece])),
                    torch.from_numpy(np.array(arrays["region_boxes"][piece])),
                )
        return {i: out[i] for i in wanted}


# ----------------------------------------------------------------------------- batching


def collate_regions(items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> RegionInputs:
    """Pad per-image (features [R_i, Dr], boxes [R_i, 4]) to a batch; mask marks real regions."""
    if not items:
        raise ValueError("collate_regions needs at least one image")
    dim = items[0][0].shape[-1]
    most = max(len(feat) for feat, _ in items)
    feat = torch.zeros(len(items), most, dim, dtype=torch.float32)
    boxes = torch.zeros(len(items), most, 4, dtype=torch.float32)
    mask = torch.zeros(len(items), most, dtype=torch.bool)
    for b, (f, box) in enumerate(items):
        feat[b, : len(f)] = torch.as_tensor(f, dtype=torch.float32)
        boxes[b, : len(box)] = torch.as_tensor(box, dtype=torch.float32)
        mask[b, : len(f)] = True
    return RegionInputs(feat, boxes, mask)


class RegionLoader:
    """Region features for a batch's images, read once per image and kept in memory.

    `chunk(examples)` serves a training chunk instead: the chunk's images are read at once and
    dropped with the chunk, so streaming a full split keeps ~one chunk of regions in memory."""

    def __init__(self, store) -> None:
        self.store = store
        self.memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, examples: Sequence[Example]) -> RegionInputs:
        missing = sorted({ex.image_id for ex in examples} - set(self.memo))
        if missing:
            self.memo.update(self.store.load(missing))
        return collate_regions([self.memo[ex.image_id] for ex in examples])

    def chunk(self, examples: Sequence[Example]) -> ChunkRegions:
        return ChunkRegions(self.store.load(ex.image_id for ex in examples))


class ChunkRegions:
    """The region features of one chunk's images (loaded together); batches of that chunk."""

    def __init__(self, items: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.items = items

    def __call__(self, examples: Sequence[Example]) -> RegionInputs:
        return collate_regions([self.items[ex.image_id] for ex in examples])


def region_loader(path: str | None) -> RegionLoader:
    if path is None:
        raise ConfigError("training needs --regions (a region feature store: `madcache regions`)")
    return RegionLoader(open_regions(path))
