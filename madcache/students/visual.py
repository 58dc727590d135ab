"""The visual-input seam: what a student reads of an image, and the loader that hands it over.

- `"regions"` (the default): region features + boxes from a region store (`madcache regions`),
  batched as `RegionInputs` (regions.py);
- `"pixels"`: the image file itself, prepared by the student's own `image_processor()` (a
  picklable callable: RGB PIL image -> (pixels [3, H, W], mask [H, W] bool or None)), batched as
  `PixelInputs` (zero padding to the batch's largest image + mask); a pixel student that
  needs more of an example than its image (`vl-bert`: the dataset's boxes) has a
  `pixel_loader(root)` method instead, returning its own loader (examples -> its inputs).

A student says which with a `visual_input` attribute on its registry factory (read before the
student is built: a region student takes its `region_dim` from the store) and on its class (read
from a loaded student). Training, evaluation and prediction build their loader with
`visual_loader(student, root=..., store=...)`; nothing else depends on the kind.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from madcache.core.errors import ConfigError
from madcache.data.records import Example
from madcache.students.base import STUDENTS, PixelInputs, VisualInputs
from madcache.students.regions import RegionLoader, RegionStore, region_loader

REGIONS, PIXELS = "regions", "pixels"
VISUAL_INPUTS = (REGIONS, PIXELS)

PixelProcessor = Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]]
VisualLoader = Callable[[Sequence[Example]], VisualInputs]


def visual_input(student_or_factory: Any) -> str:
    """`"regions"` or `"pixels"`: the `visual_input` a student (or its factory) declares."""
    kind = getattr(student_or_factory, "visual_input", REGIONS)
    if kind not in VISUAL_INPUTS:
        raise ConfigError(f"visual_input must be one of {', '.join(VISUAL_INPUTS)}, got {kind!r}")
    return kind


def student_visual_input(name: str) -> str:
    """What the registered student `name` reads (unknown names list the valid ones)."""
    return visual_input(STUDENTS.get(name))


def region_store_for(student: str, path: str | Path | None) -> RegionStore | None:
    """The region store the registered `student` reads, or None for a pixel student (which
    ignores `--regions`); a region student without one gets a one-line ConfigError."""
    if student_visual_input(student) == PIXELS:
        return None
    return region_loader(None if path is None else str(path)).store


def visual_loader(student: Any, *, root: str | Path, store: RegionStore | None) -> VisualLoader:
    """Examples -> the visual inputs `student.prepare` takes: regions from `store`, or the
    images under `root` through the student's own image processor."""
    if visual_input(student) == PIXELS:
        own = getattr(student, "pixel_loader", None)  # a pixel student with its own loader
        return own(root) if callable(own) else PixelLoader(root, student.image_processor())
    if store is None:
        raise ConfigError(
            "this student reads region features: pass --regions (a region feature "
            "store: `madcache regions`)"
        )
    return RegionLoader(store)


def loader_for(student: Any, *, root: str | Path, regions: str | Path | None) -> VisualLoader:
    """`visual_loader` for an already built student, opening the region store it needs."""
    store = (
        None
        if visual_input(student) == PIXELS
        else region_loader(None if regions is None else str(regions)).store
    )
    return visual_loader(student, root=root, store=store)


def collate_pixels(items: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> PixelInputs:
    """Pad per-image (pixels [3, H_i, W_i], mask [H_i, W_i] or None) to a batch."""
    if not items:
        raise ValueError("collate_pixels needs at least one image")
    height = max(p.shape[-2] for p, _ in items)
    width = max(p.shape[-1] for p, _ in items)
    pixels = torch.zeros(len(items), items[0][0].shape[0], height, width, dtype=torch.float32)
    mask = torch.zeros(len(items), height, width, dtype=torch.bool)
    for b, (image, real) in enumerate(items):
        h, w = image.shape[-2:]
        pixels[b, :, :h, :w] = image
        mask[b, :h, :w] = True if real is None else real.bool()
    return PixelInputs(pixels, mask)


class PixelLoader:
    """The images of a batch's examples (`example.image_path` under `root`), each processed once
    and kept for the `keep` most recently used images. Thread-safe: the training pipeline's
    batch thread and validation in the main thread may share one loader."""

    def __init__(self, root: str | Path, processor: PixelProcessor, *, keep: int = 256) -> None:
        self.root = Path(root)
        self.processor = processor
        self.keep = keep
        self.memo: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, examples: Sequence[Example]) -> PixelInputs:
        return collate_pixels([self._image(ex) for ex in examples])

    def _image(self, example: Example) -> tuple[torch.Tensor, torch.Tensor | None]:
        from madcache.data.paths import safe_join
        from madcache.students.region_extractors import load_image

        with self.lock:
            if example.image_id in self.memo:
                self.memo.move_to_end(example.image_id)
                return self.memo[example.image_id]
        path = safe_join(self.root, example.image_path, field="image_path")
        item = self.processor(load_image(path))
        with self.lock:
            self.memo[example.image_id] = item
            if len(self.memo) > self.keep:
                self.memo.popitem(last=False)
        return item
