"""Region extractors (boxcrop by hand, a tiny saved backbone, a TSV), the store and the CLI."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from madcache.core.errors import (
    CacheError,
    CacheNotFoundError,
    ConfigError,
    DataError,
    DataFileNotFoundError,
    FingerprintMismatchError,
)
from madcache.students.region_extractors import (
    BoxCrop,
    ImageItem,
    build_extractor,
    grid_boxes,
    load_image,
)
from madcache.students.regions import build_region_store, collate_regions, image_boxes, open_regions

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


@pytest.fixture
def quadrants(tmp_path):
    """40 x 20 px: top-left red, top-right blue, bottom-left green, bottom-right white."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:10, :20], pixels[:10, 20:], pixels[10:, :20], pixels[10:, 20:] = RED, BLUE, GREEN, WHITE
    path = tmp_path / "quadrants.png"
    Image.fromarray(pixels).save(path)
    return path


def test_grid_boxes():
    boxes = grid_boxes()
    assert boxes.shape == (14, 4)
    assert boxes[0].tolist() == [0, 0, 1, 1]
    assert boxes[2].tolist() == [0.5, 0, 1, 0.5]
    assert np.allclose(boxes[5], [0, 0, 1 / 3, 1 / 3]) and np.allclose(
        boxes[13], [2 / 3, 2 / 3, 1, 1]
    )


def test_boxcrop_equals_hand_computed_crop(quadrants):
    boxes = np.array([[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]], np.float32)
    feat, out_boxes = BoxCrop(grid=2).regions(ImageItem("q", quadrants, boxes))
    assert feat.shape == (2, 2 * 2 * 3 + 7) and feat.dtype == np.float32
    red, blue = np.array(RED) / 255, np.array(BLUE) / 255
    assert np.array_equal(feat[0, :12], np.tile(red, 4))  # all red
    assert np.array_equal(feat[1, :12], np.concatenate([red, blue, red, blue]))  # HWC rows
    assert np.allclose(feat[0, 12:], [0, 0, 0.5, 0.5, 0.5, 0.5, 0.25])
    assert np.allclose(feat[1, 12:], [0.25, 0, 0.75, 0.5, 0.5, 0.5, 0.25])
    assert np.array_equal(out_boxes, boxes)
    assert BoxCrop().feature_dim == 199


def test_images_missing_or_corrupt_name_the_file(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="bad.jpg.*cannot decode"):
        load_image(bad)


def test_backbone_with_a_tiny_saved_model(tmp_path, quadrants):
    import timm
    from safetensors.torch import save_file
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    boxes = np.array([[0, 0, 1, 1], [0.5, 0.5, 1, 1]], np.float32)
    item = ImageItem("q", quadrants, boxes)
    extractor = build_extractor(
        "backbone", backbone="test_resnet", weights=tmp_path / "tiny.safetensors", image_size=64
    )
    feat, _ = extractor.regions(item)
    assert extractor.feature_dim == 96 and feat.shape == (2, 96)
    with torch.no_grad():
        fmap = model.forward_features(extractor.pixels(load_image(quadrants)))  # [1, 96, 2, 2]
        rois = torch.tensor([[0, 0, 0, 64, 64], [0, 32, 32, 64, 64]], dtype=torch.float32)
        expected = roi_align(fmap, rois, 2, spatial_scale=2 / 64, sampling_ratio=2, aligned=True)
    assert np.allclose(feat, expected.mean(dim=(2, 3)).numpy(), atol=1e-6)
    from_pt = build_extractor(
        "backbone", backbone="timm:test_resnet", weights=tmp_path / "tiny.pt", image_size=64
    )
    assert np.array_equal(from_pt.regions(item)[0], feat)
    assert extractor.fingerprint()["weights_sha256"] != from_pt.fingerprint()["weights_sha256"]


def test_backbone_errors(tmp_path):
    with pytest.raises(ConfigError, match="--weights"):
        build_extractor("backbone", backbone="test_resnet")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="does not fit backbone"):
        build_extractor("backbone", backbone="test_resnet", weights=tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="boxcrop.*weights"):
        build_extractor("boxcrop", weights="x")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def write_tsv(path, rows: dict[str, dict]) -> None:
    """Rows in the bottom-up-attention format (the LXMERT / VisualBERT columns)."""
    lines = []
    for image_id, row in rows.items():
        n = len(row["boxes"])
        lines.append(
            "\t".join(
                [
                    image_id,
                    str(row["h"]),
                    str(row["w"]),
                    _b64(np.arange(n, dtype=np.int64)),
                    _b64(row["conf"].astype(np.float32)),
                    _b64(np.zeros(n, np.int64)),
                    _b64(np.zeros(n, np.float32)),
                    str(n),
                    _b64(row["boxes"].astype(np.float32)),
                    _b64(row["features"].astype(np.float32)),
                ]
            )
        )
    path.write_text("\n".join(lines) + "\n")


def tsv_row(seed: int, n: int = 3, dim: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 50, (n, 2))
    return {
        "h": 100,
        "w": 200,
        "conf": rng.uniform(0, 1, n),
        "boxes": np.concatenate([corner, corner + 40], 1),
        "features": rng.normal(size=(n, dim)),
    }


def test_tsv_import_round_trip(tmp_path):
    rows = {"img1": tsv_row(1), "COCO_val2014_000000000042": tsv_row(2)}
    write_tsv(tmp_path / "feats.tsv", rows)
    extractor = build_extractor("butd-tsv", tsv=tmp_path / "feats.tsv")
    assert extractor.feature_dim == 6
    feat, boxes = extractor.regions(ImageItem("img1", tmp_path / "img1.jpg", np.zeros((0, 4))))
    order = np.argsort(-rows["img1"]["conf"])
    assert np.array_equal(feat, rows["img1"]["features"][order].astype(np.float32))
    assert np.allclose(boxes, rows["img1"]["boxes"][order] / [200, 100, 200, 100])
    by_stem = ImageItem("42", tmp_path / "COCO_val2014_000000000042.jpg", np.zeros((0, 4)))
    assert extractor.regions(by_stem)[0].shape == (3, 6)
    with pytest.raises(DataError, match="'nope'.*has no row"):
        extractor.regions(ImageItem("nope", tmp_path / "nope.jpg", np.zeros((0, 4))))


def test_collate_regions_pads_and_masks():
    batch = collate_regions(
        [
            (torch.ones(2, 3), torch.full((2, 4), 0.5)),
            (torch.full((4, 3), 2.0), torch.full((4, 4), 0.25)),
        ]
    )
    assert batch.feat.shape == (2, 4, 3) and batch.boxes.shape == (2, 4, 4)
    assert batch.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.feat[0, 2:].abs().sum() == 0 and batch.feat[1].eq(2).all()


def test_vcr_boxes_come_from_the_metadata(demo_root):
    from madcache.data import read_examples
    from madcache.data.vcr import load_vcr_metadata

    example = read_examples("vcr", demo_root / "vcr", "train").examples[0]
    meta = load_vcr_metadata(demo_root / "vcr", example)
    boxes = image_boxes(demo_root / "vcr", example, max_regions=16)
    assert boxes.shape == (1 + len(meta.boxes), 4) and boxes[0].tolist() == [0, 0, 1, 1]
    scale = [meta.width, meta.height, meta.width, meta.height]
    assert np.allclose(boxes[1:], np.clip(meta.boxes[:, :4] / scale, 0, 1))
    assert image_boxes(demo_root / "vcr", example, max_regions=2).shape == (2, 4)


@pytest.mark.parametrize("store_format", ["zarr", "hdf5"])
def test_store_write_read_equal(tmp_path, demo_root, store_format, monkeypatch):
    from madcache.cache.verify import verify_cache
    from madcache.data import read_examples
    from madcache.students.regions import image_items

    root = demo_root / "vcr"
    out = tmp_path / "regions"
    summary = build_region_store(
        dataset="vcr",
        root=root,
        split="val",
        extractor="boxcrop",
        out=out,
        max_regions=3,
        format=store_format,
        shard_size=5,
        progress=False,
    )
    examples = read_examples("vcr", root, "val").examples
    items = list(image_items(root, examples, max_regions=3))
    assert summary["images"] == len(items) and summary["shards_written"] == -(-len(items) // 5)
    store = open_regions(out)
    assert store.feature_dim == 199 and store.max_regions == 3
    ids = [item.image_id for item in items][::-1]
    loaded = store.load(ids)
    assert list(loaded) == ids
    extractor = BoxCrop()
    for item in items:
        feat, boxes = extractor.regions(item)
        assert torch.equal(loaded[item.image_id][0], torch.from_numpy(feat))
        assert torch.equal(loaded[item.image_id][1], torch.from_numpy(boxes))
    assert verify_cache(out) == []
    # a training chunk: read at once (only the chunk's rows), served per batch, not memoised
    from madcache.students.regions import RegionLoader

    requested = []
    read_rows = store.cache.backend.read_rows
    monkeypatch.setattr(
        store.cache.backend,
        "read_rows",
        lambda path, rows: (
            requested.append(len(rows.get("region_feat", []))),
            read_rows(path, rows),
        )[1],
    )
    loader = RegionLoader(store)
    chunk = loader.chunk(examples[:4])
    assert sum(requested) == sum(len(chunk.items[i][0]) for i in chunk.items)
    assert not loader.memo
    by_chunk, by_memo = chunk(examples[3::-1]), loader(examples[3::-1])
    assert torch.equal(by_chunk.feat, by_memo.feat) and torch.equal(by_chunk.mask, by_memo.mask)
    again = build_region_store(
        dataset="vcr",
        root=root,
        split="val",
        extractor="boxcrop",
        out=out,
        max_regions=3,
        format=store_format,
        shard_size=5,
        progress=False,
    )
    assert again["shards_written"] == 0 and again["shards_reused"] == summary["shards_written"]
    with pytest.raises(FingerprintMismatchError, match="max_regions"):
        build_region_store(
            dataset="vcr",
            root=root,
            split="val",
            extractor="boxcrop",
            out=out,
            max_regions=4,
            format=store_format,
            progress=False,
        )
    with pytest.raises(CacheError, match="not in the region store.*'missing-image'"):
        store.load(["missing-image"])


def test_open_regions_errors(tmp_path):
    with pytest.raises(CacheNotFoundError):
        open_regions(tmp_path / "none")


def test_cli_butd_tsv_on_the_demo_snli_ve(tmp_path, demo_root):
    from madcache.cli import cli
    from madcache.data import read_examples

    root = demo_root / "snli-ve"
    image_ids = sorted({ex.image_id for ex in read_examples("snli-ve", root, "dev").examples})
    rows = {image_id: tsv_row(i, n=5) for i, image_id in enumerate(image_ids)}
    write_tsv(tmp_path / "dev.tsv", rows)
    out = tmp_path / "store"
    result = CliRunner().invoke(
        cli,
        [
            "regions",
            "--dataset",
            "snli-ve",
            "--root",
            str(root),
            "--split",
            "dev",
            "--extractor",
            "butd-tsv",
            "--tsv",
            str(tmp_path / "dev.tsv"),
            "--out",
            str(out),
            "--max-regions",
            "4",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{len(image_ids)} images, {4 * len(image_ids)} regions" in result.output
    store = open_regions(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"]["regions"]["name"] == "butd-tsv"
    assert manifest["fingerprint"]["dataset"]["dev"]["split"] == "dev"
    feat, boxes = store.load([image_ids[0]])[image_ids[0]]
    order = np.argsort(-rows[image_ids[0]]["conf"])[:4]
    assert torch.equal(
        feat, torch.from_numpy(rows[image_ids[0]]["features"][order].astype(np.float32))
    )
    result = CliRunner().invoke(
        cli,
        [
            "regions",
            "--dataset",
            "snli-ve",
            "--root",
            str(root),
            "--split",
            "dev",
            "--extractor",
            "backbone",
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "--weights" in result.output


def test_one_store_for_several_splits(tmp_path, demo_root):
    from madcache.data import read_examples

    root = demo_root / "vqa"
    summary = build_region_store(
        dataset="vqa",
        root=root,
        split="train,val",
        extractor="boxcrop",
        out=tmp_path / "s",
        max_regions=2,
        progress=False,
    )
    wanted = {
        ex.image_id for s in ("train", "val") for ex in read_examples("vqa", root, s).examples
    }
    store = open_regions(tmp_path / "s")
    assert set(store.image_ids()) == wanted and summary["regions"] == 2 * len(wanted)
    assert sorted(store.manifest["fingerprint"]["dataset"]) == ["train", "val"]
    assert store.manifest["split"] == "train+val"


def test_region_store_values_are_checked_naming_the_key_or_flag(tmp_path, demo_root):
    from madcache.cli import cli

    root = demo_root / "vcr"
    with pytest.raises(ConfigError, match="^max_regions: must be >= 1, got 0$"):
        build_region_store(
            dataset="vcr",
            root=root,
            split="val",
            extractor="boxcrop",
            out=tmp_path / "s",
            max_regions=0,
        )
    with pytest.raises(ConfigError, match="unknown region store option\\(s\\) regions"):
        build_region_store(dataset="vcr", root=root, split="val", regions=3)
    result = CliRunner().invoke(
        cli,
        ["regions", "--dataset", "vcr", "--root", str(root), "--split", "val", "--shard-size", "0"],
    )
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1 and "'--shard-size'" in errors[0]
    assert not (tmp_path / "s").exists()
