"""A transformers checkpoint's eval image preprocessing (its `preprocessor_config.json`),
rebuilt with torchvision on the PIL image: what the transformers teachers (teachers/hf.py,
hf_clip.py) and the `clip-finetune` student on a transformers CLIP feed their vision towers, one
implementation for both, so the student sees at step 0 the pixels the teacher's cache saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _to_rgb(image):
    return image.convert("RGB")


RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC"}  # PIL codes


def _size(value: Any, *, crop: bool) -> dict[str, int]:
    """A processor `size` / `crop_size`: a dict, or an int (the shortest edge when the processor
    centre-crops afterwards, as CLIP's; else a square, as ViT's)."""
    if isinstance(value, dict):
        return value
    return {"shortest_edge": int(value)} if crop else {"height": int(value), "width": int(value)}


def processor_transform(path: Path, image_size: int):
    """Eval preprocessing from the directory's preprocessor_config.json (the fields of
    transformers' ViT / CLIP / SigLIP image processors: resize to `size` — a shortest edge or
    height x width — with `resample`, centre crop to `crop_size` when `do_center_crop`, scale to
    [0, 1], normalise with `image_mean` / `image_std`), rebuilt with torchvision on the PIL image
    (open_clip's own eval pipeline for the same settings). Without the file: resize to the
    model's image size, mean = std = 0.5. Picklable."""
    from torchvision import transforms

    cfg_file = path / "preprocessor_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    crop = bool(cfg.get("do_center_crop", False))
    size = _size(cfg.get("size", image_size), crop=crop)
    steps = [_to_rgb]
    if cfg.get("do_resize", True):
        mode = getattr(
            transforms.InterpolationMode, RESAMPLE.get(cfg.get("resample", 2), "BILINEAR")
        )
        target = (
            size["shortest_edge"] if "shortest_edge" in size else (size["height"], size["width"])
        )
        steps.append(transforms.Resize(target, interpolation=mode))
    if crop:
        crop_size = _size(cfg.get("crop_size", image_size), crop=False)
        steps.append(transforms.CenterCrop((crop_size["height"], crop_size["width"])))
    steps.append(transforms.ToTensor())
    if cfg.get("do_normalize", True):
        steps.append(
            transforms.Normalize(cfg.get("image_mean", [0.5] * 3), cfg.get("image_std", [0.5] * 3))
        )
    return transforms.Compose(steps)
