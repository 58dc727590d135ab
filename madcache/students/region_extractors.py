"""Region feature extractors: image + boxes -> one feature per region (docs/students.md).

- `boxcrop`: no weights. Each box is cropped, area-resized to `grid x grid` RGB in [0, 1],
  flattened (row-major, HWC), followed by the box geometry (7 numbers). The demo default.
- `backbone`: a frozen CNN (timm, or `torchvision:NAME`) from a LOCAL weights file; its last
  feature map, `roi_align` (2x2, aligned) over the boxes, averaged -> C numbers per region.
- released formats (region_formats.py: `butd-tsv`, `butd-npz`, `uniter-imgdb`): detector
  features imported from their files; their boxes replace a grid, and follow VCR's whole image
  and ground-truth boxes.

Boxes are normalised (x1, y1, x2, y2) / (width, height); the first box is the whole image
(except for released formats on datasets without ground-truth boxes). Adding an extractor = a
class with `name`, `feature_dim`, `fingerprint()` and `regions(item)`, and one
`REGION_EXTRACTORS.register` line below (a released format: a `REGION_FORMATS` line in
region_formats.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from madcache.core.device import resolve_device
from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.core.io import load_weights
from madcache.core.registry import Registry
from madcache.students.region_formats import REGION_FORMATS

GEOMETRY_DIM = 7
BOXCROP_GRID = 8
BOXCROP_DIM = 3 * BOXCROP_GRID * BOXCROP_GRID + GEOMETRY_DIM
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def box_geometry(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] normalised (x1, y1, x2, y2) -> [..., 7] (x1, y1, x2, y2, w, h, w * h)."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return torch.cat([boxes, width[..., None], height[..., None], (width * height)[..., None]], -1)


def grid_boxes(levels: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
    """The fixed regions of datasets without boxes: whole image, then 2x2, then 3x3 cells
    (row-major) -> [1 + 4 + 9, 4]."""
    cells = [
        [c / n, r / n, (c + 1) / n, (r + 1) / n] for n in levels for r in range(n) for c in range(n)
    ]
    return np.asarray(cells, dtype=np.float32)


@dataclass(frozen=True)
class ImageItem:
    """One image to extract: its id, file, and normalised boxes [R, 4] (whole image first);
    `gt_boxes` [n, 4]: the dataset's ground-truth boxes in object order, all of them (VCR), or
    None (a grid)."""

    image_id: str
    path: Path
    boxes: np.ndarray
    gt_boxes: np.ndarray | None = None
    size: tuple[int, int] | None = None  # (width, height) the metadata `size_from` gives
    size_from: Path | None = None


def item_image(item: ImageItem):
    """The item's image as RGB, refused when its pixels disagree with the size its metadata
    gives (the boxes were measured on that size: they would cut other regions)."""
    image = load_image(item.path)
    if item.size is not None and tuple(image.size) != tuple(item.size):
        raise DataError(
            f"the image is {image.size[0]}x{image.size[1]} pixels but its metadata "
            f"{item.size_from} says {item.size[0]}x{item.size[1]}: the boxes would "
            "cut other regions; restore the image or its metadata",
            file=item.path,
        )
    return image


def load_image(path: Path):
    """The image as RGB; a missing or undecodable file raises an error naming it."""
    from PIL import Image

    if not Path(path).is_file():
        raise DataFileNotFoundError("image file not found", file=path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image ({exc})", file=path) from None


class RegionExtractor(Protocol):
    name: str
    feature_dim: int

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the features (name, settings, weights digest)."""
        ...

    def regions(self, item: ImageItem) -> tuple[np.ndarray, np.ndarray]:
        """(features [R, feature_dim] float32, normalised boxes [R, 4] float32)."""
        ...


def pixel_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A normalised box as whole pixels (outward rounding, at least 1 px, inside the image)."""
    left = min(max(int(math.floor(box[0] * width)), 0), width - 1)
    top = min(max(int(math.floor(box[1] * height)), 0), height - 1)
    right = max(min(int(math.ceil(box[2] * width)), width), left + 1)
    bottom = max(min(int(math.ceil(box[3] * height)), height), top + 1)
    return left, top, right, bottom


class BoxCrop:
    """Crop, area-resize to grid x grid, flatten (HWC, [0, 1]) + box geometry."""

    name = "boxcrop"

    def __init__(self, *, grid: int = BOXCROP_GRID) -> None:
        if grid < 1:
            raise ConfigError(f"boxcrop: grid must be >= 1, got {grid}")
        self.grid = grid
        self.feature_dim = 3 * grid * grid + GEOMETRY_DIM

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "version": 1, "grid": self.grid, "resample": "box"}

    def crop(self, image, box: np.ndarray) -> np.ndarray:
        from PIL import Image

        patch = image.crop(pixel_box(box, *image.size)).resize((self.grid, self.grid), Image.BOX)
        return np.asarray(patch, dtype=np.float32).reshape(-1) / 255.0

    def regions(self, item: ImageItem) -> tuple[np.ndarray, np.ndarray]:
        image = item_image(item)
        pixels = np.stack([self.crop(image, box) for box in item.boxes])
        geometry = box_geometry(torch.from_numpy(item.boxes)).numpy()
        return np.concatenate([pixels, geometry], axis=1).astype(np.float32), item.boxes


def build_backbone(spec: str) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(model with random weights, feature-map function). `NAME` / `timm:NAME` is a timm model
    (its `forward_features`); `torchvision:NAME` keeps the children before the global pool."""
    library, _, name = spec.rpartition(":")
    if library in ("", "timm"):
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=0)
        return model, model.forward_features
    if library == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        trunk = []
        for child in model.children():
            if isinstance(child, (torch.nn.AdaptiveAvgPool2d, torch.nn.Linear, torch.nn.Flatten)):
                break
            trunk.append(child)
        return model, torch.nn.Sequential(*trunk)
    raise ConfigError(f"backbone {spec!r}: use NAME or timm:NAME, or torchvision:NAME")


class Backbone:
    """A frozen CNN + roi_align over the boxes (one C-dim feature per region)."""

    name = "backbone"

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        weights: str | Path | None = None,
        image_size: int = 224,
        device: str = "auto",
    ) -> None:
        if weights is None:
            raise ConfigError(
                "the backbone extractor needs --weights PATH (a local .safetensors "
                "or torch state-dict file); madcache never downloads"
            )
        self.spec, self.weights, self.image_size = backbone, Path(weights), image_size
        self.device = torch.device(resolve_device(device))
        model, self.features = build_backbone(backbone)
        state = load_weights(self.weights, what="backbone weights")
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(
                f"{self.weights} does not fit backbone {backbone!r}: missing "
                f"{', '.join(missing[:5])}"
            )
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.feature_dim = int(
            self._feature_map(torch.zeros(1, 3, image_size, image_size)).shape[1]
        )

    def fingerprint(self) -> dict[str, Any]:
        from madcache.cache.fingerprint import file_sha256

        return {
            "name": self.name,
            "version": 1,
            "backbone": self.spec,
            "weights_sha256": file_sha256(self.weights),
            "image_size": self.image_size,
            "roi": {"output": 2, "sampling_ratio": 2, "aligned": True, "pool": "mean"},
        }

    @torch.no_grad()
    def _feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.features(pixels.to(self.device))
        if out.ndim != 4:
            raise ConfigError(
                f"backbone {self.spec!r} gives shape {tuple(out.shape)}, not a "
                "[B, C, H, W] feature map: choose a CNN"
            )
        return out

    def pixels(self, image) -> torch.Tensor:
        from PIL import Image

        resized = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return ((array - mean[:, None, None]) / std[:, None, None])[None]

    @torch.no_grad()
    def regions(self, item: ImageItem) -> tuple[np.ndarray, np.ndarray]:
        from torchvision.ops import roi_align

        fmap = self._feature_map(self.pixels(item_image(item)))
        rois = torch.from_numpy(item.boxes).float() * self.image_size
        rois = torch.cat([torch.zeros(len(rois), 1), rois], 1).to(fmap)
        pooled = roi_align(
            fmap,
            rois,
            output_size=2,
            spatial_scale=fmap.shape[-1] / self.image_size,
            sampling_ratio=2,
            aligned=True,
        )
        return pooled.mean(dim=(2, 3)).float().cpu().numpy(), item.boxes


REGION_EXTRACTORS: Registry[Callable[..., RegionExtractor]] = Registry("region extractor")
REGION_EXTRACTORS.register("boxcrop", BoxCrop)
REGION_EXTRACTORS.register("backbone", Backbone)
for _name in REGION_FORMATS:  # released formats (region_formats.py) are extractors too
    REGION_EXTRACTORS.register(_name, REGION_FORMATS.get(_name))


def build_extractor(name: str, **options: Any) -> RegionExtractor:
    """A registered extractor; options it does not take raise a `ConfigError` naming them."""
    factory = REGION_EXTRACTORS.get(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(
            f"region extractor {name!r}: {exc} (given: "
            f"{', '.join(sorted(options)) or 'no options'})"
        ) from None
