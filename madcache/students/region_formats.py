"""Region features in their released formats, imported into a region store (docs/students.md).

Each format is a region extractor (`name`, `feature_dim`, `fingerprint()`, `regions(item)`),
registered in `REGION_FORMATS` and, through it, in the extractor registry, so `madcache regions
--extractor <format>` converts released features into a region store (manifest, fingerprint,
checksums, resume and `madcache cache verify` as for any extractor):

- `butd-tsv`: bottom-up-attention TSV, 6 columns (`image_id, image_w, image_h, num_boxes, boxes,
  features`) or the 10 of LXMERT / VisualBERT (`img_id, img_h, img_w, objects_id, objects_conf,
  attrs_id, attrs_conf, num_boxes, boxes, features`);
- `butd-npz`: one `.npz` per image (bottom-up-attention.pytorch: `x`, `bbox`, `num_bbox`,
  `image_h`, `image_w`, `info`);
- `uniter-imgdb`: UNITER's img_db (LMDB of msgpack or npz values, `nbb_*.json`), including
  VCR's pair `vcr_gt_{split}` + `vcr_{split}`.

Region order. Without ground-truth boxes (SNLI-VE, VQA) the file's regions replace the dataset's
grid: `butd-tsv` 10 columns by confidence, the others in the file's order (UNITER keeps the
first `num_bb`). With ground-truth boxes (VCR, `item.gt_boxes`) the order is fixed for every
student: region 0 the whole image (its feature the mean of the image's imported features), regions
1..n the ground-truth boxes in object order (`person1` = region 1), then the detected regions.

Nothing is ever unpickled: npz values are read with `allow_pickle=False` and msgpack values with
our own decoder; an object array among the keys read is refused naming the file and key.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError, PickleRefusedError
from madcache.core.registry import Registry

REGION_FORMATS: Registry[Callable[..., Any]] = Registry(
    "region format", group="madcache.region_formats"
)
WHOLE_IMAGE = np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
GT_BOX_TOLERANCE = 0.02  # normalised units: a ground-truth region's box vs the metadata's
VCR_ORDER = "whole image (mean feature), ground-truth boxes in object order, then detected"

Regions = tuple[np.ndarray, np.ndarray]


class ImageItem(Protocol):
    """What a format reads of `region_extractors.ImageItem` (not imported: that module imports
    this one)."""

    image_id: str
    path: Path
    gt_boxes: np.ndarray | None


def require(module: str, extra: str = "uniter"):
    """Import an optional dependency, or a one-line ConfigError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"reading this region format needs the {module!r} package: pip install "
            f"'madcache[{extra}]'"
        ) from None


# ----------------------------------------------------------------------------- safe decoding


def refuse_pickle(file: object, key: str) -> PickleRefusedError:
    return PickleRefusedError(
        "an object array (a pickle); madcache never unpickles: store it as a numeric array",
        file=file,
        field=key,
    )


def npz_arrays(
    source: str | Path | bytes, keys: Iterable[str], *, file: object, optional: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz (a path, or its bytes), read with `allow_pickle=False`.
    Other keys are never read (bottom-up-attention.pytorch pickles its `info` dict); a wanted key
    that holds an object array is refused naming the file and key; a missing one is an error
    unless it is `optional`."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        archive = np.load(handle, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileNotFoundError("npz file not found", file=file) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"not an npz archive ({exc})", file=file) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError("not an npz archive (a single .npy array)", file=file)
    out = {}
    with archive:
        for key in keys:
            if key not in archive.files:
                if key in optional:
                    continue
                raise DataError(f"no array {key!r} (has: {', '.join(archive.files)})", file=file)
            try:
                out[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise refuse_pickle(file, key) from None
                raise DataError(f"cannot read ({exc})", file=file, field=key) from None
    return out


class _Packed:
    """A msgpack_numpy-encoded array, not decoded yet (so an error can name its key)."""

    def __init__(self, descr: Any, shape: Any, data: Any, scalar: bool) -> None:
        self.descr, self.shape, self.data, self.scalar = descr, shape, data, scalar


def _msgpack_hook(obj: dict) -> Any:
    """object_hook: msgpack_numpy's {nd, type, kind, shape, data} maps -> `_Packed` (raw bytes);
    never its decoder, which unpickles object arrays."""

    def get(name: str) -> Any:
        return obj.get(name.encode(), obj.get(name))

    flag = get("nd")
    if flag is None or get("data") is None or get("type") is None:
        return obj
    return _Packed(get("type"), get("shape"), get("data"), scalar=flag is not True)


def msgpack_arrays(
    data: bytes, keys: Iterable[str], *, file: object, optional: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays `keys` of a msgpack map whose values msgpack_numpy encoded (UNITER's
    uncompressed img_db values), decoded without pickle: an object dtype is refused."""
    msgpack = require("msgpack")
    try:
        unpacked = msgpack.unpackb(data, raw=False, object_hook=_msgpack_hook, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DataError(f"not a msgpack value ({exc})", file=file) from None
    if not isinstance(unpacked, dict):
        raise DataError("not a msgpack map of arrays", file=file)
    unpacked = {k.decode() if isinstance(k, bytes) else k: v for k, v in unpacked.items()}
    out = {}
    for key in keys:
        if key not in unpacked:
            if key in optional:
                continue
            raise DataError(f"no array {key!r} (has: {', '.join(map(str, unpacked))})", file=file)
        value = unpacked[key]
        if not isinstance(value, _Packed):
            raise DataError(
                f"not a msgpack_numpy array ({type(value).__name__})", file=file, field=key
            )
        out[key] = _decode_packed(value, file=file, key=key)
    return out


def _decode_packed(value: _Packed, *, file: object, key: str) -> np.ndarray:
    descr = value.descr
    if isinstance(descr, bytes):
        descr = descr.decode()
    try:
        dtype = np.dtype([tuple(f) for f in descr] if isinstance(descr, list) else descr)
    except (TypeError, ValueError) as exc:
        raise DataError(f"unknown dtype {descr!r} ({exc})", file=file, field=key) from None
    if dtype.hasobject:
        raise refuse_pickle(file, key)
    if not isinstance(value.data, (bytes, bytearray)):
        raise DataError("array data is not bytes", file=file, field=key)
    try:
        array = np.frombuffer(value.data, dtype=dtype)
        return array[0] if value.scalar else array.reshape(value.shape)
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(
            f"array data does not fit its shape ({exc})", file=file, field=key
        ) from None


# ----------------------------------------------------------------------------- region order


def normalise(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> normalised, clipped to [0, 1], float32."""
    scale = np.array([width, height, width, height], np.float32)
    return np.clip(np.asarray(boxes, np.float32)[:, :4] / scale, 0.0, 1.0).astype(np.float32)


def with_ground_truth(
    item: ImageItem, gt: Regions, detected: Regions | None, *, source: object
) -> Regions:
    """VCR's fixed order: whole image (mean of the imported features), the ground-truth regions in
    object order (checked against the metadata's boxes: `person1` = region 1), then detected."""
    gt_feat, gt_boxes = gt
    expected = item.gt_boxes
    if len(gt_feat) != len(expected):
        raise DataError(
            f"{len(gt_feat)} ground-truth regions for image {item.image_id!r}, but "
            f"its metadata has {len(expected)} objects",
            file=source,
        )
    off = np.abs(gt_boxes - expected).max(axis=1) > GT_BOX_TOLERANCE if len(expected) else []
    if np.any(off):
        first = int(np.argmax(off))
        raise DataError(
            f"ground-truth region {first + 1} of image {item.image_id!r} is box "
            f"{[round(float(v), 3) for v in gt_boxes[first]]}, the metadata's object "
            f"{first + 1} is {[round(float(v), 3) for v in expected[first]]}: the "
            "regions are not in object order",
            file=source,
        )
    feats, boxes = [gt_feat], [gt_boxes]
    if detected is not None:
        if detected[0].shape[1] != gt_feat.shape[1]:
            raise DataError(
                f"ground-truth features have {gt_feat.shape[1]} numbers, the detected "
                f"ones {detected[0].shape[1]} (image {item.image_id!r})",
                file=source,
            )
        feats.append(detected[0])
        boxes.append(detected[1])
    every = np.concatenate(feats).astype(np.float32)
    whole = (
        every.mean(axis=0, keepdims=True)
        if len(every)
        else np.zeros((1, every.shape[1]), np.float32)
    )
    return (
        np.concatenate([whole, every]).astype(np.float32),
        np.concatenate([WHOLE_IMAGE, *boxes]).astype(np.float32),
    )


def no_ground_truth_source(name: str, option: str) -> ConfigError:
    return ConfigError(
        f"{name}: this dataset has ground-truth boxes (VCR): pass {option} "
        "(features at the metadata boxes, in object order) so person1 stays "
        "region 1"
    )


def key_candidates(item: ImageItem, template: str | None, **fields: str) -> list[str]:
    """The names an image may have in a released file: the `key` template given (fields
    `image_id`, `stem` of the image file, `number`: the id's trailing digits as an int, and
    `db`: the img_db directory's name), else, in order, (UNITER) `{db}_{stem}.npz`,
    `{db}_{image_id}.npz`, `{db}_{number:012d}.npz`, then the id and the stem, as is and + .npz."""
    digits = re.search(r"(\d+)$", item.image_id) or re.search(r"(\d+)$", item.path.stem)
    number = int(digits.group(1)) if digits else None
    values = {"image_id": item.image_id, "stem": item.path.stem, "number": number, **fields}
    if template is not None:
        try:
            return [template.format(**values)]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"key template {template!r} for image {item.image_id!r}: {exc!r} "
                f"(fields: {', '.join(values)})"
            ) from None
    names = []
    if "db" in fields:
        db = fields["db"]
        names += [f"{db}_{item.path.stem}.npz", f"{db}_{item.image_id}.npz"]
        names += [f"{db}_{number:012d}.npz"] if number is not None else []
    names += [item.image_id, f"{item.image_id}.npz", item.path.stem, f"{item.path.stem}.npz"]
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- butd-tsv

TSV_FIELDS = (
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
)
TSV6_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


def decode_array(text: bytes | str, dtype: str, rows: int) -> np.ndarray:
    """A base64 field of a bottom-up-attention TSV -> [rows, -1]."""
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(rows, -1)


def parse_tsv_row(fields: list[str]) -> dict[str, Any]:
    """One 10- or 6-column row -> img_id, img_h, img_w, boxes [N, 4] px, features [N, D] and
    (10 columns) objects_conf [N]."""
    if len(fields) == len(TSV6_FIELDS):
        row = dict(zip(TSV6_FIELDS, fields))
        row.update(img_id=row["image_id"], img_h=row["image_h"], img_w=row["image_w"])
    else:
        row = dict(zip(TSV_FIELDS, fields))
    n = int(row["num_boxes"])
    out = {
        "img_id": row["img_id"],
        "img_h": int(row["img_h"]),
        "img_w": int(row["img_w"]),
        "boxes": decode_array(row["boxes"], "float32", n),
        "features": decode_array(row["features"], "float32", n),
    }
    if "objects_conf" in row:
        out["objects_conf"] = decode_array(row["objects_conf"], "float32", n).reshape(n)
    return out


class TsvFile:
    """A bottom-up-attention TSV indexed once (img_id -> byte offset); rows read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataFileNotFoundError("bottom-up-attention TSV not found", file=self.path)
        self.offsets: dict[str, int] = {}
        position, columns = 0, None
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.strip():
                    self.offsets[line.split(b"\t", 1)[0].decode()] = position
                    columns = columns or line.count(b"\t") + 1
                position += len(line)
        if not self.offsets:
            raise DataError("no rows", file=self.path)
        self.columns = columns
        self.row(next(iter(self.offsets)))  # the column count is checked on the first row

    def row(self, image_id: str) -> dict[str, Any]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offsets[image_id])
            fields = handle.readline().decode().rstrip("\r\n").split("\t")
        if len(fields) not in (len(TSV_FIELDS), len(TSV6_FIELDS)) or len(fields) != self.columns:
            raise DataError(
                f"row has {len(fields)} columns, expected 10 ({', '.join(TSV_FIELDS)})"
                f" or 6 ({', '.join(TSV6_FIELDS)}), as the file's first row",
                file=self.path,
                record_id=image_id,
            )
        return parse_tsv_row(fields)

    def find(self, item: ImageItem) -> dict[str, Any]:
        key = item.image_id if item.image_id in self.offsets else item.path.stem
        if key not in self.offsets:
            raise DataError(
                f"image {item.image_id!r} (file stem {item.path.stem!r}) has no row",
                file=self.path,
                record_id=item.image_id,
            )
        return self.row(key)

    def fingerprint(self) -> dict[str, Any]:
        from madcache.cache.fingerprint import file_sha256

        return {"file": self.path.name, "sha256": file_sha256(self.path)}


class ButdTsv:
    """Detector features from a bottom-up-attention TSV, 10 columns (sorted by confidence) or 6
    (the file's order), matched on image id, then file stem; `gt_tsv` holds VCR's ground-truth
    boxes' features (object order)."""

    name = "butd-tsv"

    def __init__(self, *, tsv: str | Path | None = None, gt_tsv: str | Path | None = None) -> None:
        if tsv is None:
            raise ConfigError("the butd-tsv extractor needs --tsv PATH")
        self.tsv = TsvFile(tsv)
        self.gt = None if gt_tsv is None else TsvFile(gt_tsv)
        self.feature_dim = int(self.tsv.row(next(iter(self.tsv.offsets)))["features"].shape[1])
        if self.gt is not None:
            gt_dim = self.gt.row(next(iter(self.gt.offsets)))["features"].shape[1]
            if gt_dim != self.feature_dim:
                raise DataError(
                    f"features have {gt_dim} numbers, the tsv's {self.feature_dim}",
                    file=self.gt.path,
                )

    def input_paths(self) -> list[Path]:
        return [self.tsv.path] + ([self.gt.path] if self.gt else [])

    def fingerprint(self) -> dict[str, Any]:
        order = "confidence" if self.tsv.columns == len(TSV_FIELDS) else "file"
        out = {"name": self.name, "version": 1, **self.tsv.fingerprint(), "order": order}
        if self.tsv.columns != len(TSV_FIELDS):
            out["columns"] = self.tsv.columns
        if self.gt is not None:
            out["gt"] = {**self.gt.fingerprint(), "columns": self.gt.columns, "order": VCR_ORDER}
        return out

    @staticmethod
    def _regions(row: dict[str, Any], *, by_confidence: bool) -> Regions:
        order = (
            np.argsort(-row["objects_conf"], kind="stable")
            if by_confidence and "objects_conf" in row
            else np.arange(len(row["boxes"]))
        )
        return (
            row["features"][order].astype(np.float32),
            normalise(row["boxes"][order], row["img_w"], row["img_h"]),
        )

    def regions(self, item: ImageItem) -> Regions:
        detected = self._regions(self.tsv.find(item), by_confidence=True)
        if item.gt_boxes is None:
            return detected
        if self.gt is None:
            raise no_ground_truth_source(self.name, "--extractor-option gt_tsv=FILE")
        gt = self._regions(self.gt.find(item), by_confidence=False)
        return with_ground_truth(item, gt, detected, source=self.gt.path)


# ----------------------------------------------------------------------------- butd-npz

NPZ_KEYS = ("x", "bbox", "image_h", "image_w")


class NpzDir:
    """A directory of per-image .npz files (bottom-up-attention.pytorch `extract_features.py`)."""

    def __init__(self, path: str | Path, key: str | None) -> None:
        self.path, self.key = Path(path), key
        if not self.path.is_dir():
            raise DataFileNotFoundError("npz feature directory not found", file=self.path)
        self.files = sorted(p.name for p in self.path.glob("*.npz"))
        if not self.files:
            raise DataError("no .npz files", file=self.path)

    def read(self, name: str) -> Regions:
        file = self.path / name
        arrays = npz_arrays(file, NPZ_KEYS + ("num_bbox",), file=file, optional=("num_bbox",))
        feat, boxes = np.asarray(arrays["x"]), np.asarray(arrays["bbox"])
        if feat.ndim != 2 or boxes.ndim != 2 or boxes.shape[1] < 4 or len(feat) != len(boxes):
            raise DataError(
                f"x {feat.shape} and bbox {boxes.shape} do not fit ([N, D], [N, 4])", file=file
            )
        if "num_bbox" in arrays and int(arrays["num_bbox"]) != len(feat):
            raise DataError(
                f"num_bbox is {int(arrays['num_bbox'])} but x has {len(feat)} rows",
                file=file,
                field="num_bbox",
            )
        return feat.astype(np.float32), normalise(
            boxes, float(arrays["image_w"]), float(arrays["image_h"])
        )

    def find(self, item: ImageItem) -> Regions:
        names = key_candidates(item, self.key)
        for name in names:
            name = name if name.endswith(".npz") else f"{name}.npz"
            if (self.path / name).is_file():
                return self.read(name)
        raise DataError(
            f"image {item.image_id!r} has no file (tried {', '.join(names)})",
            file=self.path,
            record_id=item.image_id,
        )

    def fingerprint(self) -> dict[str, Any]:
        import hashlib

        listing = hashlib.sha256()
        for name in self.files:
            listing.update(f"{name}\t{(self.path / name).stat().st_size}\n".encode())
        return {
            "dir": self.path.name,
            "files": len(self.files),
            "listing_sha256": listing.hexdigest(),
        }


class ButdNpz:
    """Per-image .npz features (`x`, `bbox` in pixels, `image_h`, `image_w`), the file's order;
    `gt_dir` holds VCR's ground-truth boxes' features (object order)."""

    name = "butd-npz"

    def __init__(
        self,
        *,
        npz_dir: str | Path | None = None,
        gt_dir: str | Path | None = None,
        key: str | None = None,
    ) -> None:
        if npz_dir is None:
            raise ConfigError("the butd-npz extractor needs --extractor-option npz_dir=DIR")
        self.detected = NpzDir(npz_dir, key)
        self.gt = None if gt_dir is None else NpzDir(gt_dir, key)
        self.key = key
        self.feature_dim = int(self.detected.read(self.detected.files[0])[0].shape[1])

    def input_paths(self) -> list[Path]:
        return [self.detected.path] + ([self.gt.path] if self.gt else [])

    def fingerprint(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "version": 1,
            **self.detected.fingerprint(),
            "order": "file",
            "key": self.key,
        }
        if self.gt is not None:
            out["gt"] = {**self.gt.fingerprint(), "order": VCR_ORDER}
        return out

    def regions(self, item: ImageItem) -> Regions:
        detected = self.detected.find(item)
        if item.gt_boxes is None:
            return detected
        if self.gt is None:
            raise no_ground_truth_source(self.name, "--extractor-option gt_dir=DIR")
        return with_ground_truth(item, self.gt.find(item), detected, source=self.gt.path)


# ----------------------------------------------------------------------------- uniter-imgdb


def compute_num_bb(confs: np.ndarray, conf_th: float, min_bb: int, max_bb: int) -> int:
    """UNITER's box count: at least `min_bb`, at most `max_bb`, else those above `conf_th`."""
    return int(min(max_bb, max(min_bb, int((np.asarray(confs) > conf_th).sum()))))


_ENVIRONMENTS: dict[str, Any] = {}


def open_lmdb(path: Path):
    """A read-only LMDB environment, opened once per process (lmdb refuses a second open)."""
    lmdb = require("lmdb")
    key = str(path.resolve())
    if key not in _ENVIRONMENTS:
        _ENVIRONMENTS[key] = lmdb.open(
            key, readonly=True, create=False, lock=False, readahead=False
        )
    return _ENVIRONMENTS[key]


class ImgDb:
    """One UNITER img_db directory, opened as UNITER's `DetectFeatLmdb` opens it: which LMDB, how
    many boxes per image (`nbb`), and the value encoding (npz if compressed, else msgpack)."""

    def __init__(
        self,
        path: str | Path,
        *,
        conf_th: float,
        max_bb: int,
        min_bb: int,
        num_bb: int,
        compressed: bool,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataFileNotFoundError("UNITER img_db directory not found", file=self.path)
        self.conf_th, self.max_bb, self.min_bb, self.num_bb = conf_th, max_bb, min_bb, num_bb
        self.compressed = compressed
        self.nbb_file: Path | None = None
        self.name2nbb: Mapping[str, int] | None = None
        if conf_th == -1:
            db_name = f"feat_numbb{num_bb}"
        else:
            db_name = f"feat_th{conf_th}_max{max_bb}_min{min_bb}"
            nbb = self.path / f"nbb_th{conf_th}_max{max_bb}_min{min_bb}.json"
            if nbb.is_file():
                self.nbb_file = nbb
                self.name2nbb = self._read_nbb(nbb)
        if compressed:
            db_name += "_compressed"
        why = ""
        if conf_th != -1 and self.name2nbb is None:  # no nbb json: all boxes, counted here
            db_name = "all_compressed" if compressed else "all"
            why = f", no nbb_th{conf_th}_max{max_bb}_min{min_bb}.json so {db_name} as UNITER"
        self.db = self.path / db_name
        if not (self.db / "data.mdb").is_file():
            present = sorted(p.name for p in self.path.iterdir() if (p / "data.mdb").is_file())
            raise DataFileNotFoundError(
                f"no LMDB for conf_th={conf_th}, max_bb={max_bb}, min_bb={min_bb}, "
                f"num_bb={num_bb}, compressed={str(compressed).lower()}{why} (present: "
                f"{', '.join(present) or 'none'})",
                file=self.db,
            )
        self.env = open_lmdb(self.db)

    @staticmethod
    def _read_nbb(path: Path) -> dict[str, int]:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read ({exc})", file=path) from None
        if not isinstance(data, dict):
            raise DataError("expected a {name: number of boxes} map", file=path)
        return data

    def get(self, key: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key.encode("utf-8"))

    def nbb(self, key: str, confs: np.ndarray | None) -> int:
        if self.conf_th == -1:
            return self.num_bb
        if self.name2nbb is not None:
            if key not in self.name2nbb:
                raise DataError(f"no entry {key!r}", file=self.nbb_file)
            return int(self.name2nbb[key])
        return compute_num_bb(confs, self.conf_th, self.min_bb, self.max_bb)

    def read(self, key: str, value: bytes) -> Regions:
        """features [nbb, D] float32, normalised boxes [nbb, 4] (the first 4 of `norm_bb`)."""
        where = f"{self.db}[{key}]"
        counted = self.conf_th != -1 and self.name2nbb is None  # nbb from `conf`
        decode = npz_arrays if self.compressed else msgpack_arrays
        arrays = decode(
            bytes(value),
            ("features", "norm_bb", "conf"),
            file=where,
            optional=() if counted else ("conf",),
        )
        feat, boxes = np.asarray(arrays["features"]), np.asarray(arrays["norm_bb"])
        if feat.ndim != 2 or boxes.ndim != 2 or boxes.shape[1] < 4 or len(feat) != len(boxes):
            raise DataError(
                f"features {feat.shape} and norm_bb {boxes.shape} do not fit ([N, D], [N, >= 4])",
                file=where,
            )
        n = self.nbb(key, arrays.get("conf"))
        return feat[:n].astype(np.float32), boxes[:n, :4].astype(np.float32)

    def fingerprint(self) -> dict[str, Any]:
        from madcache.cache.fingerprint import file_sha256

        out = {
            "dir": self.path.name,
            "db": self.db.name,
            "sha256": file_sha256(self.db / "data.mdb"),
        }
        if self.nbb_file is not None:
            out["nbb_sha256"] = file_sha256(self.nbb_file)
        return out


def db_paths(img_db: str | Path | Sequence[str | Path]) -> list[Path]:
    """`img_db` as UNITER writes it ("vcr_gt_val/;vcr_val/"), or a list of directories."""
    parts = (
        str(img_db).split(";")
        if isinstance(img_db, (str, Path))
        else [p for item in img_db for p in str(item).split(";")]
    )
    paths = [Path(p.strip()) for p in parts if p.strip()]
    if not paths:
        raise ConfigError("uniter-imgdb: img_db names no directory")
    return paths


class UniterImgDb:
    """UNITER's img_db: `img_db` is one or more img_db directories (`;`-joined as in UNITER's
    configs); a directory whose name contains `gt` holds VCR's ground-truth boxes."""

    name = "uniter-imgdb"

    def __init__(
        self,
        *,
        img_db: str | Path | Sequence[str] | None = None,
        conf_th: float = 0.2,
        max_bb: int = 100,
        min_bb: int = 10,
        num_bb: int = 36,
        compressed: bool = False,
        key: str | None = None,
    ) -> None:
        if img_db is None:
            raise ConfigError(
                "the uniter-imgdb extractor needs --extractor-option img_db=DIR "
                "(VCR: img_db='vcr_gt_val;vcr_val')"
            )
        for option, value in (("max_bb", max_bb), ("min_bb", min_bb), ("num_bb", num_bb)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"uniter-imgdb: {option} must be a whole number >= 0, got {value!r}"
                )
        if isinstance(conf_th, bool) or not isinstance(conf_th, (int, float)):
            raise ConfigError(f"uniter-imgdb: conf_th must be a number, got {conf_th!r}")
        conf_th = float(conf_th)  # UNITER's --conf_th is a float: 0 names `feat_th0.0_...`
        self.settings = {
            "conf_th": conf_th,
            "max_bb": max_bb,
            "min_bb": min_bb,
            "num_bb": num_bb,
            "compressed": bool(compressed),
        }
        self.key = key
        self.gt, self.detected = [], []
        for path in db_paths(img_db):
            if "gt" in path.name:  # UNITER: the gt db, all its boxes (-1, num_bb 100)
                self.gt.append(
                    ImgDb(
                        path,
                        conf_th=-1,
                        max_bb=max_bb,
                        min_bb=min_bb,
                        num_bb=100,
                        compressed=bool(compressed),
                    )
                )
            else:
                self.detected.append(
                    ImgDb(
                        path,
                        conf_th=conf_th,
                        max_bb=max_bb,
                        min_bb=min_bb,
                        num_bb=num_bb,
                        compressed=bool(compressed),
                    )
                )
        self.feature_dim = self._first_dim()

    def _first_dim(self) -> int:
        db = (self.detected or self.gt)[0]
        with db.env.begin() as txn:
            for key, value in txn.cursor():
                if key != b"__keys__":
                    return int(db.read(key.decode(), value)[0].shape[1])
        raise DataError("no images", file=db.db)

    def input_paths(self) -> list[Path]:
        return [db.path for db in self.gt + self.detected]

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": 1,
            **self.settings,
            "key": self.key,
            "detected": [db.fingerprint() for db in self.detected],
            "gt": [db.fingerprint() for db in self.gt],
            "order": "file",
        }

    def _find(self, dbs: list[ImgDb], item: ImageItem) -> Regions:
        tried = []
        for db in dbs:
            for key in key_candidates(item, self.key, db=db.path.name):
                value = db.get(key)
                if value is not None:
                    return db.read(key, value)
                tried.append(key)
        raise DataError(
            f"image {item.image_id!r} is not in {', '.join(str(d.db) for d in dbs)} "
            f"(tried keys {', '.join(dict.fromkeys(tried))})",
            record_id=item.image_id,
        )

    def regions(self, item: ImageItem) -> Regions:
        if item.gt_boxes is None:
            if not self.detected:
                raise ConfigError(
                    "uniter-imgdb: this dataset has no ground-truth boxes: give a "
                    "detected img_db (a directory without 'gt' in its name)"
                )
            return self._find(self.detected, item)
        if not self.gt:
            raise no_ground_truth_source(self.name, "img_db='vcr_gt_SPLIT;vcr_SPLIT'")
        detected = self._find(self.detected, item) if self.detected else None
        return with_ground_truth(
            item,
            self._find(self.gt, item),
            detected,
            source=", ".join(str(db.db) for db in self.gt),
        )


REGION_FORMATS.register("butd-tsv", ButdTsv)
REGION_FORMATS.register("butd-npz", ButdNpz)
REGION_FORMATS.register("uniter-imgdb", UniterImgDb)
