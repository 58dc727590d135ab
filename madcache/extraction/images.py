"""The image path of extraction (`--image-decode`): how a dataset image becomes a teacher's pixels.

- `exact` (default): PIL decodes the file in a worker and the teacher's own transform
  (`image_transform()`, a torchvision `Compose`) resizes, crops and normalises it there.
- `crop-first`: the same, but a resize followed by a centre crop resizes only the region the
  crop keeps (PIL `resize(box=...)`): the same filter at the same sample positions, a fraction
  of the work on a large frame; PIL's fixed-point passes round a few pixels a grey level or
  two apart (docs/extraction.md, "The image path").
- `tensor`: PIL decodes in a worker, and `TensorTransform` (below) resizes, crops and
  normalises the uint8 tensor there: torchvision's vectorised antialiased resize, several times
  faster than PIL's on the CPU, within a grey level or two of it.
- `gpu`: workers only read the file's bytes; the main process decodes them on the extraction
  device (`torchvision.io.decode_jpeg`: nvjpeg on CUDA, libjpeg-turbo on the CPU) and resizes
  (antialiased, the transform's filter), crops and normalises with tensor ops
  (`TensorTransform`). An image that is not an RGB JPEG (PNG, grayscale, CMYK) is decoded by
  PIL in the worker as in `exact` and joins the rest as a uint8 tensor. On a CPU extraction
  device, its pixels are `tensor`'s (libjpeg-turbo decodes as PIL does, to the bit).

Only `exact` reproduces the pixels bit for bit; the others are in the cache's fingerprint
(`fingerprint_entry`), so caches made with different paths never mix or resume into each other.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.data.paths import safe_join
from madcache.extraction.config import ImageDecode

# steps of a teacher's transform that only make an image RGB (a no-op on what `load_rgb` gives)
_TO_RGB = {"MaybeConvertMode", "_convert_to_rgb", "_to_rgb"}
# ... or turn it into a float tensor in [0, 1]
_TO_RGB_TENSOR = _TO_RGB | {"MaybeToTensor", "ToTensor"}
_TENSOR_FILTERS = {"bilinear", "bicubic"}


def fingerprint_entry(decode: ImageDecode) -> dict[str, Any] | None:
    """The fingerprint's `images` entry: None for `exact` (the fingerprint of a cache made
    before the choice existed, which it reproduces), else what the pixels depend on."""
    if decode == "exact":
        return None
    if decode == "crop-first":
        from PIL import __version__ as pil_version

        return {
            "decode": decode,
            "resize": "PIL resize of the centre-crop box only (resize(box=...))",
            "pillow": pil_version,
        }
    import torchvision

    decoder = (
        "torchvision.io.decode_jpeg on the extraction device (PIL for files that are not RGB JPEGs)"
        if decode == "gpu"
        else "PIL in the workers"
    )
    return {
        "decode": decode,
        "resize": f"{decoder}; antialiased uint8 tensor resize, centre crop, normalise",
        "torchvision": torchvision.__version__,
    }


def worker_transform(
    decode: ImageDecode, transform: Callable[[Any], torch.Tensor], *, teacher: str
) -> Callable[[Any], torch.Tensor]:
    """What a worker applies to a decoded PIL image for the teacher whose transform this is
    (`gpu`: the teacher's own; its workers never call it, as they only read bytes)."""
    if decode == "crop-first":
        return crop_first(transform)
    if decode == "tensor":
        return OnPil(TensorTransform.of(transform, teacher=teacher))
    return transform


# --- crop-first: PIL, resize only the kept box -----------------------------------------------


@dataclass(frozen=True)
class ResizeCrop:
    """A transform's leading `Resize(shortest edge)` + `CenterCrop`, as numbers."""

    shortest: int
    max_size: int | None
    crop: tuple[int, int]  # (height, width)
    resample: int  # a PIL filter code

    def box(self, width: int, height: int) -> tuple[float, float, float, float] | None:
        """The source region the crop keeps, in source pixels, computed as torchvision does
        (its resized size, then its rounded crop offsets); None when the crop would pad."""
        # torchvision's own rule (private): the box is where its resize puts the crop
        from torchvision.transforms.functional import _compute_resized_output_size

        new_h, new_w = _compute_resized_output_size((height, width), [self.shortest], self.max_size)
        crop_h, crop_w = self.crop
        if crop_h > new_h or crop_w > new_w:
            return None
        top = int(round((new_h - crop_h) / 2.0))
        left = int(round((new_w - crop_w) / 2.0))
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)


class CropFirst:
    """A teacher's transform with its resize + centre crop done as one PIL resize of the kept
    box; the rest of the transform (RGB, tensor, normalise) runs as is. Picklable."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], geometry: ResizeCrop) -> None:
        from torchvision import transforms

        self.full = transform
        self.geometry = geometry
        self.tail = transforms.Compose(_without_leading_rgb(transform.transforms)[2:])

    def __call__(self, image) -> torch.Tensor:
        box = self.geometry.box(*image.size)
        if box is None:  # smaller than the crop: the transform pads, as exact
            return self.full(image)
        crop_h, crop_w = self.geometry.crop
        return self.tail(image.resize((crop_w, crop_h), self.geometry.resample, box=box))

    def __repr__(self) -> str:
        return f"CropFirst({self.full!r})"


def crop_first(transform: Callable[[Any], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
    """`CropFirst` of a transform that starts with a shortest-edge `Resize` and a `CenterCrop`;
    any other transform unchanged (nothing to save: a squash resize keeps every pixel)."""
    geometry = _resize_crop(transform)
    return transform if geometry is None else CropFirst(transform, geometry)


def _resize_crop(transform: Any) -> ResizeCrop | None:
    from torchvision import transforms
    from torchvision.transforms.functional import pil_modes_mapping

    if not isinstance(transform, transforms.Compose):
        return None
    steps = _without_leading_rgb(transform.transforms)
    if len(steps) < 2:
        return None
    resize, crop = steps[0], steps[1]
    if type(resize) is not transforms.Resize or type(crop) is not transforms.CenterCrop:
        return None
    size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
    if len(size) != 1:
        return None
    return ResizeCrop(
        shortest=int(size[0]),
        max_size=resize.max_size,
        crop=(int(crop.size[0]), int(crop.size[1])),
        resample=int(pil_modes_mapping[resize.interpolation]),
    )


# --- gpu: bytes from the workers, pixels on the device ---------------------------------------


@dataclass(frozen=True)
class TensorTransform:
    """A teacher's eval transform (resize, optional centre crop, to [0, 1], normalise) on uint8
    image tensors, on whatever device they are: the `gpu` image path's pixels."""

    size: tuple[int, ...]  # one int: the shortest edge; two: (height, width)
    max_size: int | None
    interpolation: str
    crop: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """[3, H, W] uint8 tensors (sizes may differ) -> [B, 3, h, w] float32 pixels."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = InterpolationMode(self.interpolation)
        out = []
        for image in images:
            image = F.resize(
                image, list(self.size), interpolation=mode, max_size=self.max_size, antialias=True
            )
            if self.crop is not None:
                image = F.center_crop(image, list(self.crop))
            out.append(image)
        pixels = torch.stack(out).float().div_(255)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
            pixels = pixels.sub_(mean).div_(std)
        return pixels

    @classmethod
    def of(cls, transform: Any, *, teacher: str) -> TensorTransform:
        """The tensor form of a teacher's transform; a step it does not know is one line
        naming the teacher, the step, and `--image-decode exact`."""
        from torchvision import transforms

        steps = _without_leading_rgb(getattr(transform, "transforms", [transform]))
        first = steps[0] if steps else "no Resize"
        resize = steps.pop(0) if steps and type(steps[0]) is transforms.Resize else None
        crop = steps.pop(0) if steps and type(steps[0]) is transforms.CenterCrop else None
        normalize = steps.pop() if steps and type(steps[-1]) is transforms.Normalize else None
        unknown = [s for s in steps if _step_name(s) not in _TO_RGB_TENSOR]
        if resize is None:
            unknown.insert(0, first)
        elif resize.interpolation.value not in _TENSOR_FILTERS:
            unknown.insert(0, f"Resize {resize.interpolation.value}")
        if unknown:
            raise ConfigError(
                f"--image-decode tensor/gpu: teacher {teacher}'s image transform has a step "
                f"the tensor path does not reproduce ({_step_name(unknown[0])}; it knows a "
                "leading Resize, bilinear or bicubic, CenterCrop, to-tensor and Normalize); "
                "pass --image-decode exact or crop-first"
            )
        size = (resize.size,) if isinstance(resize.size, int) else tuple(resize.size)
        return cls(
            size=tuple(int(s) for s in size),
            max_size=resize.max_size,
            interpolation=resize.interpolation.value,
            crop=None if crop is None else (int(crop.size[0]), int(crop.size[1])),
            mean=None if normalize is None else tuple(float(m) for m in normalize.mean),
            std=None if normalize is None else tuple(float(s) for s in normalize.std),
        )


@dataclass(frozen=True)
class OnPil:
    """A `TensorTransform` applied to one RGB PIL image: the `tensor` path's worker step."""

    tensor: TensorTransform

    def __call__(self, image) -> torch.Tensor:
        return self.tensor([pil_to_tensor(image)])[0]


def _without_leading_rgb(steps: Sequence[Any]) -> list[Any]:
    """A transform's steps less those that only make the (already RGB) input image RGB before
    it is resized (transformers' processors convert first: madcache.data.pixels)."""
    steps = list(steps)
    while steps and _step_name(steps[0]) in _TO_RGB:
        steps.pop(0)
    return steps


def _step_name(step: Any) -> str:
    if isinstance(step, str):
        return step
    return getattr(step, "__name__", type(step).__name__)


def read_encoded(root: Path, relative: str) -> torch.Tensor:
    """Worker side of the `gpu` path: an RGB JPEG's file bytes (1-D uint8), else the image
    decoded by PIL to RGB ([3, H, W] uint8: PNG, grayscale and CMYK JPEGs, ...). Only the
    header is parsed here; a missing or unreadable file names its path."""
    from PIL import Image, UnidentifiedImageError

    path = safe_join(root, relative)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and image.mode == "RGB":
                return torch.frombuffer(bytearray(data), dtype=torch.uint8)
            image.load()
            return pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    except FileNotFoundError:
        raise DataFileNotFoundError("image not found", file=path) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"image cannot be decoded ({exc})", file=path) from None


def pil_to_tensor(image) -> torch.Tensor:
    """An RGB PIL image as a [3, H, W] uint8 tensor."""
    from torchvision.transforms.functional import pil_to_tensor as to_tensor

    return to_tensor(image)


def decode_on(
    encoded: Sequence[torch.Tensor], device: str, *, root: Path, paths: Sequence[str]
) -> list[torch.Tensor]:
    """Main-process side of the `gpu` path: the workers' items as [3, H, W] uint8 tensors on
    `device`, the JPEG bytes decoded there in one batched call. A file the decoder refuses
    (truncated, corrupt) names its path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, item in enumerate(encoded) if item.dim() == 1]
    out = [item if item.dim() == 1 else item.to(device, non_blocking=True) for item in encoded]
    if not jpegs:
        return out
    try:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = [_decode_one(encoded[i], device, safe_join(root, paths[i])) for i in jpegs]
    for i, image in zip(jpegs, decoded):
        out[i] = image
    return out


def _decode_one(data: torch.Tensor, device: str, path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = lines[0].rsplit(", ", 1)[-1]  # torchvision: "decode_jpeg, FILE.cpp:N, why"
        raise DataError(f"image cannot be decoded ({reason})", file=path) from None
