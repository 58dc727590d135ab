"""Released region-feature formats (region_formats.py): tiny stores written here in each original
layout read back exactly; VCR keeps the whole image and its ground-truth boxes first; nothing is
ever unpickled."""

from __future__ import annotations

import base64
import io
import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError, PickleRefusedError
from madcache.students.region_extractors import REGION_EXTRACTORS, ImageItem, build_extractor
from madcache.students.region_formats import REGION_FORMATS
from madcache.students.regions import build_region_store, image_items, open_regions

lmdb = pytest.importorskip("lmdb", reason="lmdb (madcache[uniter]) is not installed")
msgpack = pytest.importorskip("msgpack", reason="msgpack (madcache[uniter]) is not installed")
msgpack_numpy = pytest.importorskip(
    "msgpack_numpy", reason="msgpack-numpy (madcache[uniter-test]) is not installed"
)

VCR_LINE = "extracted/val-1_from_iflytek_VLE_examples_VCR_README.jsonl"


class Trap:
    """Unpickling this writes `path`: a value that would prove a pickle ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('unpickled')",)


def trap_array(path) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = Trap(path)
    return array


def test_the_trap_is_live(tmp_path):
    pickle.loads(pickle.dumps(trap_array(tmp_path / "ran")))
    assert (tmp_path / "ran").read_text() == "unpickled"


def item(image_id: str, stem: str | None = None, gt_boxes=None) -> ImageItem:
    from pathlib import Path

    return ImageItem(
        image_id, Path("images") / f"{stem or image_id}.jpg", np.zeros((0, 4)), gt_boxes
    )


# ----------------------------------------------------------------------------- UNITER img_db


def dump(seed: int, confs, dim: int = 5) -> dict[str, np.ndarray]:
    """One image as UNITER's npz dumps hold it: features, norm_bb (x1, y1, x2, y2, w, h), conf."""
    rng = np.random.default_rng(seed)
    n = len(confs)
    corner = rng.uniform(0, 0.5, (n, 2))
    size = rng.uniform(0.1, 0.5, (n, 2))
    norm_bb = np.concatenate([corner, corner + size, size], 1).astype(np.float32)
    return {
        "features": rng.normal(size=(n, dim)).astype(np.float32),
        "norm_bb": norm_bb,
        "conf": np.asarray(confs, np.float32),
        "soft_labels": rng.uniform(size=(n, 4)).astype(np.float32),
    }


def encode(value: dict[str, np.ndarray], compress: bool) -> bytes:
    """A value as UNITER's scripts/convert_imgdir.py encodes it."""
    if compress:
        with io.BytesIO() as writer:
            np.savez_compressed(writer, **value)
            return writer.getvalue()
    return msgpack.dumps(value, default=msgpack_numpy.encode, use_bin_type=True)


def write_img_db(
    img_dir,
    dumps: dict[str, dict],
    *,
    conf_th=0.2,
    max_bb=100,
    min_bb=10,
    num_bb=100,
    compress=False,
    keep_all=False,
) -> None:
    """An img_db as UNITER's convert_imgdir.py writes it: float32 -> float16, the first nbb
    rows kept (all with keep_all), `__keys__`, and nbb_th*.json unless keep_all or conf_th -1."""
    if keep_all:
        name = "all"
    elif conf_th == -1:
        name = f"feat_numbb{num_bb}"
    else:
        name = f"feat_th{conf_th}_max{max_bb}_min{min_bb}"
    name += "_compressed" if compress else ""
    (img_dir / name).mkdir(parents=True)
    env = lmdb.open(str(img_dir / name), map_size=1 << 26)
    name2nbb = {}
    with env.begin(write=True) as txn:
        for fname, arrays in dumps.items():
            nbb = (
                None
                if keep_all
                else int(min(max_bb, max(min_bb, (arrays["conf"] > conf_th).sum())))
            )
            value = {
                k: (a.astype(np.float16) if a.dtype == np.float32 else a)[:nbb]
                for k, a in arrays.items()
            }
            txn.put(fname.encode(), encode(value, compress))
            name2nbb[fname] = nbb
        txn.put(b"__keys__", json.dumps(list(name2nbb)).encode())
    env.close()
    if conf_th != -1 and not keep_all:
        (img_dir / f"nbb_th{conf_th}_max{max_bb}_min{min_bb}.json").write_text(json.dumps(name2nbb))


CONFS_A = [0.9, 0.1, 0.5, 0.3, 0.05, 0.8, 0.7]  # 5 above 0.2
CONFS_B = [0.1, 0.05, 0.15]  # none above 0.2


def f16(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("compress", [False, True], ids=["msgpack", "npz"])
def test_uniter_imgdb_round_trip_with_nbb_json(tmp_path, compress):
    dumps = {"coco_a.npz": dump(1, CONFS_A), "coco_b.npz": dump(2, CONFS_B)}
    write_img_db(tmp_path / "coco", dumps, max_bb=4, min_bb=2, compress=compress)
    extractor = build_extractor(
        "uniter-imgdb", img_db=str(tmp_path / "coco"), max_bb=4, min_bb=2, compressed=compress
    )
    assert extractor.feature_dim == 5
    # a: 5 above conf_th, at most max_bb = 4; b: none above, at least min_bb = 2 (file order)
    for name, keep in (("a", 4), ("b", 2)):
        feat, boxes = extractor.regions(item(name))  # key {db}_{stem}.npz = coco_a.npz
        source = dumps[f"coco_{name}.npz"]
        assert feat.dtype == np.float32 and boxes.dtype == np.float32
        assert np.array_equal(feat, f16(source["features"][:keep]))
        assert np.array_equal(boxes, f16(source["norm_bb"][:keep, :4]))
    fingerprint = extractor.fingerprint()
    assert fingerprint["detected"][0]["db"] == "feat_th0.2_max4_min2" + "_compressed" * compress
    assert "nbb_sha256" in fingerprint["detected"][0]


def test_uniter_imgdb_counts_boxes_without_nbb_json_and_fixed_num_bb(tmp_path):
    dumps = {"a.npz": dump(1, CONFS_A), "b.npz": dump(2, CONFS_B)}
    write_img_db(tmp_path / "all", dumps, keep_all=True, compress=True)
    counted = build_extractor(
        "uniter-imgdb",
        img_db=tmp_path / "all",
        max_bb=4,
        min_bb=2,
        compressed=True,
        key="{stem}.npz",
    )
    assert counted.fingerprint()["detected"][0]["db"] == "all_compressed"
    assert len(counted.regions(item("a"))[0]) == 4 and len(counted.regions(item("b"))[0]) == 2
    write_img_db(tmp_path / "fixed", dumps, conf_th=-1, num_bb=6)
    fixed = build_extractor("uniter-imgdb", img_db=f"{tmp_path / 'fixed'}/", conf_th=-1, num_bb=6)
    assert len(fixed.regions(item("a"))[0]) == 6 and len(fixed.regions(item("b"))[0]) == 3
    with pytest.raises(
        DataFileNotFoundError,
        match=r"fixed/all: no LMDB for conf_th=0.2, .*"
        r"no nbb_th0.2_max100_min10.json so all "
        r"as UNITER \(present: feat_numbb6\)$",
    ):
        build_extractor("uniter-imgdb", img_db=tmp_path / "fixed")
    with pytest.raises(DataError, match=r"'nope'.*tried keys fixed_nope.npz, nope, nope.npz\)$"):
        fixed.regions(item("nope"))
    # UNITER's COCO names: coco_val2014_000000000042.npz for image 42 (COCO_val2014_...42.jpg)
    write_img_db(
        tmp_path / "coco_val2014",
        {"coco_val2014_000000000042.npz": dumps["a.npz"]},
        conf_th=-1,
        num_bb=6,
    )
    coco = build_extractor("uniter-imgdb", img_db=tmp_path / "coco_val2014", conf_th=-1, num_bb=6)
    assert len(coco.regions(item("42", "COCO_val2014_000000000042"))[0]) == 6
    with pytest.raises(ConfigError, match="key template '{number:03d}' for image 'x'"):
        build_extractor(
            "uniter-imgdb",
            img_db=tmp_path / "coco_val2014",
            conf_th=-1,
            num_bb=6,
            key="{number:03d}",
        ).regions(item("x"))


@pytest.mark.parametrize("compress", [False, True], ids=["msgpack", "npz"])
def test_uniter_imgdb_refuses_an_object_array_without_unpickling(tmp_path, compress):
    marker = tmp_path / "ran"
    value = dump(1, CONFS_A)
    value["features"] = trap_array(marker)
    value["soft_labels"] = trap_array(marker)  # a key madcache never reads
    db = tmp_path / "coco" / ("feat_numbb100" + "_compressed" * compress)
    db.mkdir(parents=True)
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"coco_b.npz", encode(dump(2, CONFS_B), compress))
        txn.put(b"coco_z.npz", encode(value, compress))
    env.close()
    extractor = build_extractor(
        "uniter-imgdb",
        img_db=tmp_path / "coco",
        conf_th=-1,
        num_bb=100,
        compressed=compress,
        key="{db}_{stem}.npz",
    )
    assert len(extractor.regions(item("b"))[0]) == 3
    with pytest.raises(PickleRefusedError) as refused:
        extractor.regions(item("z"))
    message = str(refused.value)
    assert "\n" not in message and "coco_z.npz" in message and "field 'features'" in message
    assert "never unpickles" in message and not marker.exists()


def test_uniter_imgdb_without_lmdb_names_the_extra(tmp_path, monkeypatch):
    import sys

    write_img_db(tmp_path / "coco", {"coco_a.npz": dump(1, CONFS_A)})
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(
        ConfigError,
        match=r"^reading this region format needs the 'lmdb' "
        r"package: pip install 'madcache\[uniter\]'$",
    ):
        build_extractor("uniter-imgdb", img_db=tmp_path / "coco")


# ----------------------------------------------------------------------------- BUTD TSV / npz


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def tsv6_line(image_id: str, w: int, h: int, boxes: np.ndarray, feats: np.ndarray) -> str:
    """bottom-up-attention's generate_tsv.py FIELDNAMES: image_id, image_w, image_h, num_boxes,
    boxes, features (base64 float32)."""
    return "\t".join(
        [
            image_id,
            str(w),
            str(h),
            str(len(boxes)),
            b64(boxes.astype(np.float32)),
            b64(feats.astype(np.float32)),
        ]
    )


def pixel_regions(seed: int, n: int, w: int = 200, h: int = 100, dim: int = 6):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 50, (n, 2))
    return np.concatenate([corner, corner + 40], 1), rng.normal(size=(n, dim))


def test_butd_tsv_six_columns_keep_the_file_order(tmp_path):
    (boxes1, feats1), (boxes2, feats2) = pixel_regions(1, 3), pixel_regions(2, 4)
    (tmp_path / "f.tsv").write_text(
        tsv6_line("1", 200, 100, boxes1, feats1)
        + "\n"
        + tsv6_line("COCO_x_2", 200, 100, boxes2, feats2)
        + "\n"
    )
    extractor = build_extractor("butd-tsv", tsv=tmp_path / "f.tsv")
    feat, boxes = extractor.regions(item("1"))
    assert np.array_equal(feat, feats1.astype(np.float32))
    assert np.array_equal(boxes, (boxes1.astype(np.float32) / np.float32([200, 100, 200, 100])))
    assert np.array_equal(extractor.regions(item("2", "COCO_x_2"))[0], feats2.astype(np.float32))
    assert extractor.fingerprint()["order"] == "file" and extractor.fingerprint()["columns"] == 6
    with open(tmp_path / "f.tsv", "a") as handle:
        handle.write("3\t1\t2\t3\t4\t5\t6\t7\n")
    with pytest.raises(DataError, match="row has 8 columns, expected 10 .* or 6 "):
        build_extractor("butd-tsv", tsv=tmp_path / "f.tsv").regions(item("3"))


def write_npz(path, *, boxes, feats, w, h, info_trap=None, x=None) -> None:
    """bottom-up-attention.pytorch extract_features.py: x, bbox (pixels), num_bbox, image_h,
    image_w, and `info`, a dict (a pickle)."""
    info = {"objects_conf": np.ones(len(boxes)), "trap": Trap(info_trap or path.with_suffix(".x"))}
    np.savez_compressed(
        path,
        x=feats if x is None else x,
        bbox=boxes,
        num_bbox=len(boxes),
        image_h=h,
        image_w=w,
        info=info,
    )


def test_butd_npz_reads_the_arrays_never_the_pickled_info(tmp_path):
    marker = tmp_path / "ran"
    boxes, feats = pixel_regions(1, 5)
    (tmp_path / "feats").mkdir()
    write_npz(
        tmp_path / "feats" / "img7.npz",
        boxes=boxes,
        feats=feats.astype(np.float32),
        w=200,
        h=100,
        info_trap=marker,
    )
    extractor = build_extractor("butd-npz", npz_dir=tmp_path / "feats")
    assert extractor.feature_dim == 6
    feat, out_boxes = extractor.regions(item("7", "img7"))
    assert np.array_equal(feat, feats.astype(np.float32))
    assert np.array_equal(
        out_boxes, np.clip(boxes.astype(np.float32) / np.float32([200, 100, 200, 100]), 0, 1)
    )
    write_npz(
        tmp_path / "feats" / "evil.npz",
        boxes=boxes,
        feats=None,
        w=200,
        h=100,
        info_trap=marker,
        x=trap_array(marker),
    )
    with pytest.raises(PickleRefusedError, match=r"evil.npz, field 'x': an object array"):
        extractor.regions(item("evil"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- VCR order


def vcr_sources(tmp_path, root, split, *, dim=4, shuffle_gt=False, reader_split=None):
    """UNITER's pair for a VCR split: vcr_gt_{split} (features at the metadata boxes, object
    order, conf_th -1) and vcr_{split} (detections); keys vcr[_gt]_{split}_{stem}.npz."""
    from madcache.data import read_examples

    examples = read_examples("vcr", root, reader_split or split).examples
    items = list(image_items(root, examples, max_regions=99))
    gt_dumps, det_dumps = {}, {}
    for i, it in enumerate(items):
        rng = np.random.default_rng(i)
        gt = it.gt_boxes[::-1] if shuffle_gt else it.gt_boxes
        wh = gt[:, 2:] - gt[:, :2]
        gt_dumps[f"vcr_gt_{split}_{it.path.stem}.npz"] = {
            "features": rng.normal(size=(len(gt), dim)).astype(np.float32),
            "norm_bb": np.concatenate([gt, wh], 1).astype(np.float32),
            "conf": np.ones(len(gt), np.float32),
        }
        det_dumps[f"vcr_{split}_{it.path.stem}.npz"] = dump(100 + i, [0.9, 0.1, 0.5], dim=dim)
    write_img_db(tmp_path / f"vcr_gt_{split}", gt_dumps, conf_th=-1, num_bb=100)
    write_img_db(tmp_path / f"vcr_{split}", det_dumps, min_bb=1)
    return items, gt_dumps, det_dumps


def test_vcr_whole_image_then_ground_truth_in_object_order_then_detected(tmp_path, demo_root):
    root = demo_root / "vcr"
    items, gt_dumps, det_dumps = vcr_sources(tmp_path, root, "val")
    out = tmp_path / "store"
    summary = build_region_store(
        dataset="vcr",
        root=root,
        split="val",
        extractor="uniter-imgdb",
        extractor_options={"img_db": f"{tmp_path}/vcr_gt_val/;{tmp_path}/vcr_val/", "min_bb": 1},
        out=out,
        max_regions=99,
        progress=False,
    )
    store = open_regions(out)
    loaded = store.load(it.image_id for it in items)
    for it in items:
        gt = gt_dumps[f"vcr_gt_val_{it.path.stem}.npz"]
        det = det_dumps[f"vcr_val_{it.path.stem}.npz"]
        expected = np.concatenate([f16(gt["features"]), f16(det["features"][:2])])
        feat, boxes = (t.numpy() for t in loaded[it.image_id])
        n = len(it.gt_boxes)
        assert boxes[0].tolist() == [0, 0, 1, 1]
        assert np.allclose(feat[0], expected.mean(0), atol=1e-6)
        assert np.array_equal(feat[1:], expected)  # person1 = region 1, ...
        assert np.array_equal(boxes[1 : 1 + n], f16(gt["norm_bb"][:, :4]))
        assert np.allclose(boxes[1 : 1 + n], it.gt_boxes, atol=1e-3)
        assert np.array_equal(boxes[1 + n :], f16(det["norm_bb"][:2, :4]))
    assert summary["regions"] == sum(len(it.gt_boxes) + 3 for it in items)
    with pytest.raises(ConfigError, match="ground-truth boxes .*img_db='vcr_gt_SPLIT;vcr_SPLIT'"):
        build_region_store(
            dataset="vcr",
            root=root,
            split="val",
            extractor="uniter-imgdb",
            extractor_options={"img_db": str(tmp_path / "vcr_val"), "min_bb": 1},
            out=tmp_path / "s2",
            progress=False,
        )


def test_vcr_ground_truth_out_of_object_order_is_refused(tmp_path, demo_root):
    root = demo_root / "vcr"
    items, _, _ = vcr_sources(tmp_path, root, "val", shuffle_gt=True)
    extractor = build_extractor("uniter-imgdb", img_db=[str(tmp_path / "vcr_gt_val")])
    it = next(i for i in items if len(i.gt_boxes) > 1)
    with pytest.raises(DataError, match="ground-truth region 1 .* not in object order"):
        extractor.regions(it)


def test_butd_tsv_on_vcr_needs_and_keeps_the_ground_truth(tmp_path, demo_root):
    from madcache.data import read_examples

    root = demo_root / "vcr"
    it = next(image_items(root, read_examples("vcr", root, "val").examples, max_regions=99))
    w, h = 640, 480  # pixel boxes of any size normalise back to the metadata's
    gt_px = it.gt_boxes * np.float32([w, h, w, h])
    gt_feat = np.random.default_rng(0).normal(size=(len(gt_px), 6))
    det_boxes, det_feat = pixel_regions(3, 2, w, h)
    (tmp_path / "det.tsv").write_text(tsv6_line(it.path.stem, w, h, det_boxes, det_feat) + "\n")
    (tmp_path / "gt.tsv").write_text(tsv6_line(it.path.stem, w, h, gt_px, gt_feat) + "\n")
    with pytest.raises(ConfigError, match="^butd-tsv: this dataset has ground-truth boxes"):
        build_extractor("butd-tsv", tsv=tmp_path / "det.tsv").regions(it)
    extractor = build_extractor("butd-tsv", tsv=tmp_path / "det.tsv", gt_tsv=tmp_path / "gt.tsv")
    feat, boxes = extractor.regions(it)
    assert np.allclose(boxes[1 : 1 + len(gt_px)], it.gt_boxes, atol=1e-6)
    assert np.array_equal(feat[1:], np.concatenate([gt_feat, det_feat]).astype(np.float32))


@pytest.mark.real
def test_real_vcr_image_grounds_person1_to_region_1(tmp_path, real_root):
    root = real_root / "vcr"
    items, gt_dumps, _ = vcr_sources(tmp_path, root, "val", dim=3, reader_split=VCR_LINE)
    assert len(items) == 1 and len(items[0].gt_boxes) == 6  # the metadata's 6 objects
    build_region_store(
        dataset="vcr",
        root=root,
        split=VCR_LINE,
        extractor="uniter-imgdb",
        extractor_options={"img_db": f"{tmp_path}/vcr_gt_val;{tmp_path}/vcr_val", "min_bb": 1},
        out=tmp_path / "store",
        progress=False,
    )
    feat, boxes = open_regions(tmp_path / "store").load([items[0].image_id])[items[0].image_id]
    gt = gt_dumps[f"vcr_gt_val_{items[0].path.stem}.npz"]
    assert torch.equal(feat[1:7], torch.from_numpy(f16(gt["features"])))
    meta = json.loads(items[0].path.with_suffix(".json").read_text())
    person1 = np.float32(meta["boxes"][0][:4]) / np.float32([meta["width"], meta["height"]] * 2)
    assert meta["names"][0] == "person" and np.allclose(boxes[1].numpy(), person1, atol=1e-3)


# ----------------------------------------------------------------------------- registry, CLI


def test_formats_are_registered_extractors():
    assert REGION_FORMATS.names() == ["butd-npz", "butd-tsv", "uniter-imgdb"]
    assert all(name in REGION_EXTRACTORS for name in REGION_FORMATS)


def test_cli_uniter_imgdb_and_a_refused_pickle(tmp_path, demo_root):
    from madcache.cli import cli

    root = demo_root / "vcr"
    items, _, _ = vcr_sources(tmp_path, root, "val")
    args = [
        "regions",
        "--dataset",
        "vcr",
        "--root",
        str(root),
        "--split",
        "val",
        "--extractor",
        "uniter-imgdb",
        "--extractor-option",
        f"img_db={tmp_path}/vcr_gt_val;{tmp_path}/vcr_val",
        "--extractor-option",
        "min_bb=1",
        "--max-regions",
        "4",
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert f"{len(items)} images, {4 * len(items)} regions" in result.output
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["fingerprint"]["regions"]["name"] == "uniter-imgdb"
    # a gt value whose features are pickled: one line, exit 2, nothing unpickled
    marker, bad = tmp_path / "ran", tmp_path / "bad"
    vcr_sources(bad, root, "val")
    env = lmdb.open(str(bad / "vcr_gt_val" / "feat_numbb100"), map_size=1 << 26)
    key = f"vcr_gt_val_{items[0].path.stem}.npz"
    with env.begin(write=True) as txn:
        value = msgpack.loads(txn.get(key.encode()), object_hook=msgpack_numpy.decode)
        value["features"] = trap_array(marker)
        txn.put(key.encode(), encode(value, compress=False))
    env.close()
    args[args.index(f"img_db={tmp_path}/vcr_gt_val;{tmp_path}/vcr_val")] = (
        f"img_db={bad}/vcr_gt_val;{bad}/vcr_val"
    )
    result = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "store2")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert key in lines[0] and "field 'features'" in lines[0] and not marker.exists()
