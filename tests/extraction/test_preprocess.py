"""Extraction's CPU side: images decoded as before (bit for bit), whatever their mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from madcache.extraction.jobs import load_rgb


@pytest.mark.parametrize(
    "mode, suffix", [("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg"), ("P", "png"), ("RGBA", "png")]
)
def test_load_rgb_gives_the_pixels_of_convert_rgb(tmp_path, mode, suffix):
    """An RGB image is returned as decoded (no whole-frame copy); any other mode converted.
    Either way the pixels are those of `Image.open(path).convert("RGB")`."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
    image.save(tmp_path / f"x.{suffix}")
    loaded = load_rgb(tmp_path, f"x.{suffix}")
    with Image.open(tmp_path / f"x.{suffix}") as reference:
        expected = np.asarray(reference.convert("RGB"))
    assert loaded.mode == "RGB" and loaded.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(loaded), expected)
    assert expected.std() > 0
