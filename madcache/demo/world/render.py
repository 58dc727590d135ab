"""Drawing a scene into JPEG bytes: the same seed gives the same bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from madcache.demo.world.world import IMAGE_SIZE, JPEG_QUALITY, PROP_GREY, Scene, Thing

COLOUR_JITTER = 14
NOISE_STD = 4.0


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    shifted = np.clip(
        np.array(rgb) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255
    )
    return tuple(int(v) for v in shifted)


def _draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, rng: np.random.Generator) -> None:
    rgb = _jittered(thing.colour.rgb if thing.is_person else PROP_GREY, rng)
    if thing.shape is not None and thing.shape.name == "ring":
        width = max(3, int((thing.box[2] - thing.box[0]) / 4))
        draw.ellipse([round(v) for v in thing.box], outline=rgb, width=width)
    else:
        draw.polygon(list(thing.polygon), fill=rgb)


def render_scene(scene: Scene, rng: np.random.Generator) -> bytes:
    """The scene as JPEG bytes: a lightly noisy background, then each object's outline filled."""
    noise = rng.normal(0.0, NOISE_STD, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.array(scene.background, dtype=np.float64) + noise, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for thing in scene.things:
        _draw_thing(draw, thing, rng)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buffer.getvalue()
