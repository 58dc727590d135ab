from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from madcache.cli import cli
from madcache.core.errors import DataFileNotFoundError

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
}
SHAPES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12 images, one per (colour, shape), each with its caption."""
    root = tmp_path_factory.mktemp("world")
    (root / "images").mkdir()
    (root / "captions").mkdir()
    lines = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        image = Image.new("RGB", (48, 48), (200, 200, 200))
        draw = ImageDraw.Draw(image)
        box = [10, 10, 38, 38]
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(10, 38), (38, 38), (24, 10)], fill=COLOURS[colour])
        image.save(root / "images" / f"{i:02d}.png")
        lines.append(json.dumps({"image": f"images/{i:02d}.png", "caption": f"a {colour} {shape}"}))
    (root / "captions" / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_pretrain_lowers_the_loss_and_reloads(world, tmp_path):
    from safetensors.torch import load_file

    from madcache.demo.teacher import sidecar_path
    from madcache.teachers import load_teacher
    from madcache.teachers.clip import create_model

    out = tmp_path / "teacher.safetensors"
    args = [
        "demo",
        "teacher",
        "--data",
        str(world),
        "--out",
        str(out),
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "held-out image->caption top-1" in result.output
    summary = json.loads(sidecar_path(out).read_text())
    losses = summary["loss_history"]
    assert summary["status"] == "complete" and summary["steps"] == 20 and len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    assert summary["n_images"] == 12 and summary["n_heldout_captions"] >= 1

    teacher = load_teacher("madcache-demo", checkpoint=out)
    model = create_model("madcache-demo").eval()
    model.load_state_dict(load_file(str(out)))
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            teacher.encode_images(pixels), model.encode_image(pixels), atol=1e-5, rtol=0
        )
    assert teacher.fingerprint()["checkpoint"]["sha256"] == summary["checkpoint_sha256"]

    stamp = out.stat().st_mtime_ns
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and out.stat().st_mtime_ns == stamp  # complete: nothing done


def test_missing_corpus_is_a_clean_error(tmp_path):
    from madcache.demo.teacher import read_captions

    with pytest.raises(DataFileNotFoundError, match="captions.jsonl"):
        read_captions(tmp_path)
    (tmp_path / "world").mkdir()
    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "teacher",
            "--data",
            str(tmp_path / "world"),
            "--out",
            str(tmp_path / "t.safetensors"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "madcache demo data" in result.output
