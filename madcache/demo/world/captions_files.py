"""The demo world's caption corpus: `captions/captions.jsonl` + `captions/images/*.jpg`.

Cheap, plentiful image-text pairs (the CLIP-style teacher's pretraining data): each image gets
several captions that name what is visible and what it means in this world. Each line also
carries the image's object classes and pixel boxes (as a detector would give them), so a
region-based student can be pretrained on the same pairs (`madcache demo student`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from madcache.demo.world.render import render_scene
from madcache.demo.world.text import image_captions
from madcache.demo.world.world import OPEN_SCENES, sample_scene


def write_captions(
    root: Path, n_images: int, per_image: int, rng: np.random.Generator, tick: Callable[[], None]
) -> dict:
    """Write `n_images` images with `per_image` captions each (fewer only for scenes too small
    to describe in that many different ways); returns counts."""
    out = root / "captions"
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_images):
        scene = sample_scene(rng, OPEN_SCENES)
        relative = f"captions/images/{index:06d}.jpg"
        (root / relative).write_bytes(render_scene(scene, rng))
        boxes = [[float(v) for v in thing.box] for thing in scene.things]
        objects = [thing.kind for thing in scene.things]
        for caption in image_captions(scene, rng, per_image):
            lines.append(
                json.dumps(
                    {"image": relative, "caption": caption, "objects": objects, "boxes": boxes}
                )
            )
        tick()
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"images": n_images, "captions": len(lines)}
