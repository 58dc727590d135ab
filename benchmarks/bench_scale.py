"""Full-size training splits on one node: memory, bytes read / bytes used, low-shot load speed.

For each of VCR (425,846 Q->A and QA->R examples of 212,923 questions), VQA v2 (443,757
questions) and SNLI-VE (529,527 pairs), at `--fraction` of the real count and at a tenth of it,
writes synthetic dataset files in the real format (read by the real readers), a Zarr and an
HDF5 teacher-target cache of them (extraction's 1,024 examples per shard; `--dim` wide features
and `--words` words per text, smaller than CLIP's 512 to fit a 2-core machine's disk and time),
then measures, each in a fresh process:

- `lowshot`: `madcache.train.setup.setup` of a low-shot MD run (`--shots` per category) and its
  one target load: peak RSS, rows/s, bytes read (the process's read() bytes, /proc/self/io) /
  bytes used (the stored bytes of the feature rows the method keeps); then MAD's task-stage
  load of the same subset (+ the selected words' features and the logits): bytes read / used;
- `af`: a full-split adaptive-finetuning epoch's data (MAD's AF stage, the setup's `af_source`
  read chunk by chunk as the training pipeline does; the student's step is not run, its memory
  does not depend on the split): setup's wall seconds and peak RSS, RSS after setup, the
  epoch's own peak RSS, the chunks' examples per second (read from disk where setup stored
  them) and their targets' rows/s and bytes read / used;
- `load`: `Cache.load_targets` of a random 3% of the ids with MD's needs, zarr and hdf5, rows/s.

Every figure is printed for both sizes with the 100% / 10% growth, and projected to D = 512
(feature bytes scale with D, the rest does not). `--code DIR` runs the measuring processes
against another checkout (e.g. the main branch: "before"); `--compare DIR` runs both and prints
them side by side, ratios measured in one run. One JSON line per measurement, then a table.

    python benchmarks/bench_scale.py [--fraction 1.0] [--datasets vcr,vqa,snli-ve]
                                     [--dim 16] [--words 6] [--compare /work/main]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and "--measure" not in sys.argv:
    sys.path.insert(0, str(REPO))

SIZES = {"vcr": 425_846, "vqa": 443_757, "snli-ve": 529_527}
PER_IMAGE = {"vcr": 4, "vqa": 5, "snli-ve": 18}  # examples per image (VCR: 2 questions x 2)
CHOICES = {"vcr": 4, "vqa": 1, "snli-ve": 1}
SHARD = 1024  # extraction's default shard size
VQA_K = 8  # candidate answers with teacher logits
STUDENT = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=40)
WORDS = (
    "person man woman dog car street table holding looking walking red blue old young "
    "because happy angry door window phone cup bag hat shirt"
).split()
QUESTIONS = ("Why is", "What is", "Where is", "How is", "What will", "What does")
VQA_QUESTIONS = ("how many", "is the", "what color is the", "what is the", "is there a")


# ----------------------------------------------------------------------------- dataset files


def sentence(rng: np.random.Generator, low: int, high: int) -> list[str]:
    return [str(w) for w in rng.choice(WORDS, int(rng.integers(low, high)))]


def write_vcr(root: Path, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`train.jsonl` of n // 2 questions (each gives a :qa and a :qar example)."""
    folder = root
    folder.mkdir(parents=True)
    out = []
    with open(folder / "train.jsonl", "w", encoding="utf-8") as handle:
        for q in range(n // 2):
            image = f"img{q // 2:07d}"
            record = {
                "annot_id": f"train-{q}",
                "movie": "m",
                "img_id": image,
                "img_fn": f"lsmdc_m/{image}.jpg",
                "metadata_fn": f"lsmdc_m/{image}.json",
                "objects": ["person", "person", "car"],
                "question": [
                    *QUESTIONS[q % len(QUESTIONS)].split(),
                    [0],
                    *sentence(rng, 2, 6),
                    "?",
                ],
                "answer_choices": [[[1], *sentence(rng, 3, 8), "."] for _ in range(4)],
                "rationale_choices": [sentence(rng, 4, 10) + ["."] for _ in range(4)],
                "answer_label": int(rng.integers(4)),
                "rationale_label": int(rng.integers(4)),
                "question_number": 0,
            }
            handle.write(json.dumps(record) + "\n")
            out += [(f"train-{q}:qa", image), (f"train-{q}:qar", image)]
    return out


def write_vqa(root: Path, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    folder = root
    (folder / "train2014").mkdir(parents=True)
    questions, annotations, out = [], [], []
    for q in range(n):
        image = 1_000_000 + q // PER_IMAGE["vqa"]
        qid = image * 100 + q % PER_IMAGE["vqa"]
        kind = VQA_QUESTIONS[q % len(VQA_QUESTIONS)]
        questions.append(
            {
                "image_id": image,
                "question": " ".join([kind, *sentence(rng, 1, 5)]) + "?",
                "question_id": qid,
            }
        )
        answer = str(rng.choice(WORDS))
        annotations.append(
            {
                "question_id": qid,
                "image_id": image,
                "question_type": kind,
                "answer_type": "other",
                "multiple_choice_answer": answer,
                "answers": [
                    {"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                    for k in range(10)
                ],
            }
        )
        out.append((str(qid), str(image)))
    for name, key, rows in (
        ("v2_OpenEnded_mscoco_train2014_questions.json", "questions", questions),
        ("v2_mscoco_train2014_annotations.json", "annotations", annotations),
    ):
        (folder / name).write_text(json.dumps({key: rows}), encoding="utf-8")
    return out


def write_snli_ve(root: Path, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    folder = root
    folder.mkdir(parents=True)
    labels = ("entailment", "neutral", "contradiction")
    out = []
    with open(folder / "snli_ve_train.jsonl", "w", encoding="utf-8") as handle:
        for i in range(n):
            image = str(1_000_000 + i // PER_IMAGE["snli-ve"])
            label = labels[i % 3]
            pair = f"{i}{label[0]}"
            handle.write(
                json.dumps(
                    {
                        "pairID": pair,
                        "Flickr30K_ID": image,
                        "sentence1": " ".join(sentence(rng, 6, 12)),
                        "sentence2": " ".join(sentence(rng, 4, 9)),
                        "gold_label": label,
                    }
                )
                + "\n"
            )
            out.append((pair, image))
    return out


WRITERS = {"vcr": write_vcr, "vqa": write_vqa, "snli-ve": write_snli_ve}


# ----------------------------------------------------------------------------- caches


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(np.float16)


def cache_shard(
    dataset: str, examples: list[tuple[str, str]], rng: np.random.Generator, dim: int, words: int
) -> dict[str, np.ndarray]:
    """One shard's arrays (examples in image order, `words` words per scored text)."""
    c, n = CHOICES[dataset], len(examples)
    images, example_image = np.unique([image for _, image in examples], return_inverse=True)
    n_texts, n_words = n * c, n * c * words
    arrays = {
        "example_id": np.array([eid for eid, _ in examples]),
        "image_id": images,
        "example_image": example_image.astype(np.int64),
        "example_texts": np.arange(n_texts, dtype=np.int64).reshape(n, c),
        "image_feat": normal(rng, len(images), dim),
        "text_eos": normal(rng, n_texts, dim),
        "text_truncated": np.zeros(n_texts, bool),
        "word_offsets": np.arange(0, n_words + 1, words, dtype=np.int64),
        "word_feat": normal(rng, n_words, dim),
        "word_span": np.tile(np.arange(2 * words, dtype=np.int32).reshape(words, 2), (n * c, 1)),
        "word_truncated": np.zeros(n_words, bool),
        "word_vr": rng.random(n_words, dtype=np.float32),
        "word_yake": rng.random(n_words, dtype=np.float32),
        "word_score": rng.random(n_words, dtype=np.float32),
    }
    if dataset == "vcr":
        arrays["logits/iqa"] = rng.normal(size=(n, c)).astype(np.float32)
    elif dataset == "vqa":
        arrays["logits/template"] = rng.normal(size=(n, VQA_K)).astype(np.float32)
        arrays["candidates"] = rng.integers(0, 100, (n, VQA_K)).astype(np.int64)
    else:
        arrays["similarity"] = rng.random(n, dtype=np.float32)
    return arrays


def write_cache(
    path: Path,
    dataset: str,
    root: Path,
    examples: list[tuple[str, str]],
    *,
    fmt: str,
    dim: int,
    words: int,
) -> None:
    from madcache.cache.fingerprint import dataset_fingerprint
    from madcache.cache.writer import CacheWriter

    logits = {"vcr": "iqa", "vqa": "template", "snli-ve": "kmeans"}[dataset]
    manifest = {
        "fingerprint": {"dataset": dataset_fingerprint(dataset, root, "train", {})},
        "dataset": dataset,
        "split": "train",
        "num_choices": CHOICES[dataset],
        "dims": {"image": dim, "text": dim},
        "settings": {"default_logits": logits},
        "teachers": {"vision": "bench", "text": "bench"},
        "extra": {
            "kmeans_centres": [0.3, 0.2, 0.1],
            "kmeans_scale": 100.0,
            **({"answer_vocab": [f"answer{i}" for i in range(100)]} if dataset == "vqa" else {}),
        },
    }
    rng = np.random.default_rng(1)
    writer = CacheWriter.open(path, manifest=manifest, format=fmt)
    for shard, start in enumerate(range(0, len(examples), SHARD)):
        writer.write_shard(
            shard, cache_shard(dataset, examples[start : start + SHARD], rng, dim, words)
        )
    writer.finish()


def write_regions(path: Path, images: list[str]) -> None:
    """A region store (2 regions of 8 dims per image): the student's visual input."""
    from madcache.cache.writer import CacheWriter
    from madcache.students.regions import shard_arrays

    rng = np.random.default_rng(2)
    manifest = {
        "kind": "regions",
        "fingerprint": {"bench": 1},
        "dataset": "bench",
        "split": "train",
        "num_choices": 0,
        "dims": {"region": 8},
        "settings": {"extractor": "bench", "max_regions": 2, "splits": ["train"]},
    }
    writer = CacheWriter.open(path, manifest=manifest, format="zarr")
    for shard, start in enumerate(range(0, len(images), SHARD)):
        ids = images[start : start + SHARD]
        boxes = np.tile(np.array([[0.1, 0.1, 0.9, 0.9]], np.float32), (2, 1))
        writer.write_shard(
            shard,
            shard_arrays(
                ids, [(rng.normal(size=(2, 8)).astype(np.float32), boxes) for _ in ids], 2
            ),
            index_columns={"image_id": ids},
        )
    writer.finish()


def build(
    folder: Path, dataset: str, n: int, *, dim: int, words: int, formats: tuple[str, ...]
) -> list[str]:
    """Dataset files under `folder/data`, caches under `folder/<format>`; the example ids."""
    examples = WRITERS[dataset](folder / "data", n, np.random.default_rng(0))
    examples.sort(key=lambda e: e[1])  # image order (stable), as caches store it
    for fmt in formats:
        write_cache(folder / fmt, dataset, folder / "data", examples, fmt=fmt, dim=dim, words=words)
    write_regions(folder / "regions", list(dict.fromkeys(image for _, image in examples)))
    return [eid for eid, _ in examples]


# ----------------------------------------------------------------------------- measuring


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss, which Linux keeps across
    exec, it does not include the parent's memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def bytes_read() -> int:
    """Bytes this process's read() calls returned (pread included; page-cache hits count)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def used_bytes(examples, targets, dim: int) -> tuple[int, int]:
    """(feature bytes, other bytes) of the targets a method keeps, at the stored precision (fp16
    features, one image row per image): what a reader must read at the least."""
    if targets is None:
        return 0, 0
    images = len({ex.image_id for ex in examples}) if targets.image is not None else 0
    feature = images * dim * 2
    if targets.text_eos is not None:
        feature += targets.text_eos.numel() * 2
    if targets.word_mask is not None:
        feature += int(targets.word_mask.sum()) * dim * 2
    other = sum(
        getattr(targets, name).numel() * getattr(targets, name).element_size()
        for name in ("logits", "candidates")
        if getattr(targets, name) is not None
    )
    return feature, other


def run_setup(folder: Path, dataset: str, method: str, shots: int, fmt: str = "zarr"):
    import torch

    from madcache.train.config import TrainConfig
    from madcache.train.setup import setup

    torch.set_num_threads(1)
    config = TrainConfig(
        dataset=dataset,
        root=str(folder / "data"),
        out=str(folder / "run"),
        method=method,
        cache=str(folder / fmt),
        per_category=shots,
        regions=str(folder / "regions"),
        eval_split=None,
        student_options=STUDENT,
        device="cpu",
    )
    return setup(config)


def timed_load(load, examples, dim: int) -> dict:
    """One target load of `examples`: rows/s, bytes read / used. A load of one other example
    first, so that lazy imports and metadata caches are not counted."""
    load(examples[-1:])
    read0, started, cpu = bytes_read(), time.perf_counter(), time.process_time()
    targets = load(examples)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    feature, other = used_bytes(examples, targets, dim)
    return {
        "rows": len(examples),
        "rows_per_s": round(len(examples) / seconds),
        "rows_per_cpu_s": round(len(examples) / max(cpu, 1e-6)),
        "bytes_read": bytes_read() - read0,
        "bytes_used": feature + other,
        "feature_bytes": feature,
    }


def measure_lowshot(folder: Path, dataset: str, shots: int, dim: int) -> dict:
    """A low-shot MD run's setup and target load; then the MAD task stage's load of the same
    subset (`mad`: its bytes)."""
    from madcache.method.methods import TASK, get_method
    from madcache.train.setup import target_loader

    started = time.perf_counter()
    built = run_setup(folder, dataset, "md", shots)
    setup_s = time.perf_counter() - started
    source = built.task_source
    examples = [source.examples[i] for i in source.chunks[0]]
    md = timed_load(source.load, examples, dim)
    peak = peak_mb()
    from madcache.cache.reader import open_cache

    mad = target_loader(built.config, get_method("mad").only(TASK), open_cache(built.config.cache))
    return {
        **md,
        "setup_s": round(setup_s, 1),
        "rss_after_setup_mb": round(rss_mb()),
        "peak_rss_mb": round(peak),
        "mad": timed_load(mad, examples, dim),
    }


def measure_af(folder: Path, dataset: str, shots: int, dim: int) -> dict:
    started = time.perf_counter()
    built = run_setup(folder, dataset, "mad", shots)
    setup_s = time.perf_counter() - started
    source = built.af_source
    after_setup, setup_peak = rss_mb(), peak_mb()
    reset_peak()  # peak_rss_mb: the epoch's own peak
    source.load(source.examples[:1])  # lazy imports and metadata, not counted
    read = feature = other = rows = 0
    loading = examples_s = 0.0
    for index in range(len(source.chunks)):
        started = time.perf_counter()  # the chunk's examples (from disk where setup put them)
        examples = [source.examples[j] for j in source.chunks[index]]
        examples_s += time.perf_counter() - started
        read0, started = bytes_read(), time.perf_counter()  # their targets, as DataSource.chunk
        targets = source.load(examples)
        loading += time.perf_counter() - started
        read += bytes_read() - read0
        f, o = used_bytes(examples, targets, dim)
        feature, other, rows = feature + f, other + o, rows + len(examples)
        del examples, targets
    return {
        "rows": rows,
        "chunks": len(source.chunks),
        "rows_per_s": round(rows / loading),
        "examples_per_s": round(rows / examples_s),
        "bytes_read": read,
        "bytes_used": feature + other,
        "feature_bytes": feature,
        "setup_s": round(setup_s, 1),
        "rss_after_setup_mb": round(after_setup),
        "setup_peak_rss_mb": round(setup_peak),
        "peak_rss_mb": round(peak_mb()),
    }


def measure_load(folder: Path, ids: list[str], dim: int) -> dict:
    """Random 3% of the ids, MD's needs, from each format's cache: rows/s (best of 2)."""
    from madcache.cache.reader import open_cache

    rng = np.random.default_rng(3)
    subset = [
        ids[i] for i in np.sort(rng.choice(len(ids), max(1, len(ids) * 3 // 100), replace=False))
    ]
    rng.shuffle(subset)
    out = {"rows": len(subset)}
    for fmt in ("zarr", "hdf5"):
        if not (folder / fmt).exists():
            continue
        seconds, cpu = [], []
        for _ in range(3):
            cache = open_cache(folder / fmt)
            cache.index()
            started, started_cpu = time.perf_counter(), time.process_time()
            targets = cache.load_targets(subset, needs=("image", "text_eos"))
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        out[f"{fmt}_rows_per_s"] = round(len(subset) / min(seconds))
        # rows per CPU second: on a machine whose cores other jobs share, the figure that
        # depends least on them
        out[f"{fmt}_rows_per_cpu_s"] = round(len(subset) / max(min(cpu), 1e-6))
        out[f"{fmt}_checksum"] = float(np.float64(targets.image.sum() + targets.text_eos.sum()))
    return out


MEASURES = ("lowshot", "af", "load")


def measure(kind: str, folder: Path, dataset: str, *, shots: int, dim: int) -> dict:
    if kind == "lowshot":
        return measure_lowshot(folder, dataset, shots, dim)
    if kind == "af":
        return measure_af(folder, dataset, shots, dim)
    ids = json.loads((folder / "ids.json").read_text())
    return measure_load(folder, ids, dim)


def in_process(code: Path, kind: str, folder: Path, dataset: str, args) -> dict:
    """One measurement in a fresh process whose `madcache` is the checkout `code`."""
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--measure",
            kind,
            "--folder",
            str(folder),
            "--datasets",
            dataset,
            "--shots",
            str(args.shots),
            "--dim",
            str(args.dim),
        ],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} {dataset} ({code}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def projected(result: dict, dim: int, to: int = 512) -> float:
    """bytes read / bytes used with D = `to`: feature bytes scale with D, the rest does not."""
    scale = to / dim
    overhead = result["bytes_read"] - result["bytes_used"]
    used = result["feature_bytes"] * scale + result["bytes_used"] - result["feature_bytes"]
    return (used + overhead) / max(used, 1)


def summary(results: dict, dim: int) -> list[str]:
    """Rows of `label | 10% | 100% | 100% / 10%` per code, dataset and figure."""
    lines = ["| code | dataset | figure | 10% | 100% | 100% / 10% |", "|---|---|---|---|---|---|"]
    figures = (
        ("lowshot", "peak_rss_mb", "low-shot MD run: peak RSS (MB)"),
        ("af", "rss_after_setup_mb", "AF epoch: RSS after setup (MB)"),
        ("af", "setup_peak_rss_mb", "AF epoch: peak RSS during setup (MB)"),
        ("af", "peak_rss_mb", "AF epoch: peak RSS (MB)"),
        ("af", "setup_s", "AF run: setup wall seconds"),
        ("af", "examples_per_s", "AF epoch: examples/s (setup's examples, one at a time)"),
        ("lowshot", "setup_s", "low-shot MD run: setup wall seconds"),
        ("lowshot", "read/used", "low-shot MD load: bytes read / used"),
        ("mad", "read/used", "low-shot MAD task load: bytes read / used"),
        ("af", "read/used", "AF epoch: bytes read / used"),
        ("lowshot", "read/used@512", "low-shot MD load: read / used at D=512"),
        ("mad", "read/used@512", "low-shot MAD task load: read / used at D=512"),
        ("af", "read/used@512", "AF epoch: read / used at D=512"),
        ("lowshot", "rows_per_s", "low-shot MD subset load: rows/s"),
        ("lowshot", "rows_per_cpu_s", "low-shot MD subset load: rows per CPU s"),
        ("load", "zarr_rows_per_s", "random 3% load, zarr: rows/s"),
        ("load", "hdf5_rows_per_s", "random 3% load, hdf5: rows/s"),
        ("load", "zarr_rows_per_cpu_s", "random 3% load, zarr: rows per CPU s"),
        ("load", "hdf5_rows_per_cpu_s", "random 3% load, hdf5: rows per CPU s"),
    )
    for (code, dataset), sizes in results.items():
        for kind, key, label in figures:
            values = []
            for size in ("10%", "100%"):
                result = sizes.get(size, {}).get("lowshot" if kind == "mad" else kind)
                result = result.get("mad") if kind == "mad" and result else result
                if result is None:
                    values.append(None)
                elif key == "read/used":
                    values.append(result["bytes_read"] / max(result["bytes_used"], 1))
                elif key == "read/used@512":
                    values.append(projected(result, dim))
                else:
                    values.append(result.get(key))
            if all(v is None for v in values):
                continue
            growth = values[1] / values[0] if None not in values and values[0] else None
            shown = [
                f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if v is not None else "-"
                for v in values
            ]
            lines.append(
                f"| {code} | {dataset} | {label} | {shown[0]} | {shown[1]} | "
                f"{'-' if growth is None else f'{growth:.2f}'} |"
            )
    return lines


def best(old: dict | None, new: dict) -> dict:
    """Of two runs of one measurement, the faster one's rows/s (memory and bytes are the same
    in every run; the first run's are kept)."""
    if old is None:
        return new
    return {
        **old,
        **{
            k: max(v, old.get(k, 0))
            for k, v in new.items()
            if k.endswith("per_s") or k.endswith("per_cpu_s")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="of the real example counts (the '100%%' size; '10%%' is a tenth)",
    )
    parser.add_argument("--datasets", default="vcr,vqa,snli-ve")
    parser.add_argument("--dim", type=int, default=16, help="teacher feature width")
    parser.add_argument("--words", type=int, default=6, help="cached words per text")
    parser.add_argument("--shots", type=int, default=64, help="low-shot: per category")
    parser.add_argument("--measures", default=",".join(MEASURES))
    parser.add_argument("--formats", default="zarr,hdf5")
    parser.add_argument("--code", default=str(REPO), help="checkout to measure")
    parser.add_argument("--compare", default=None, help="another checkout, measured alike")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each measurement this many times, checkouts alternating; rows/s: the best",
    )
    parser.add_argument("--measure", choices=MEASURES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    if args.measure:
        print(
            json.dumps(
                measure(
                    args.measure, Path(args.folder), datasets[0], shots=args.shots, dim=args.dim
                )
            )
        )
        return
    codes = [Path(args.code)] + ([Path(args.compare)] if args.compare else [])
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            full = max(SHARD, int(SIZES[dataset] * args.fraction))
            for size, n in (("10%", full // 10), ("100%", full)):
                folder = Path(tmp) / f"{dataset}-{n}"
                started = time.perf_counter()
                ids = build(
                    folder,
                    dataset,
                    n,
                    dim=args.dim,
                    words=args.words,
                    formats=tuple(args.formats.split(",")),
                )
                (folder / "ids.json").write_text(json.dumps(ids))
                print(
                    json.dumps(
                        {
                            "dataset": dataset,
                            "size": size,
                            "examples": len(ids),
                            "build_s": round(time.perf_counter() - started, 1),
                        }
                    ),
                    flush=True,
                )
                for _, code, kind in itertools.product(
                    range(args.repeat), codes, args.measures.split(",")
                ):
                    result = best(
                        results.get((code.name, dataset), {}).get(size, {}).get(kind),
                        in_process(code, kind, folder, dataset, args),
                    )
                    results.setdefault((code.name, dataset), {}).setdefault(size, {})[kind] = result
                    print(
                        json.dumps(
                            {
                                "code": str(code),
                                "dataset": dataset,
                                "size": size,
                                "examples": len(ids),
                                "measure": kind,
                                **result,
                            }
                        ),
                        flush=True,
                    )
                del ids
                subprocess.run(["rm", "-rf", str(folder)], check=False)
    print("\n".join(summary(results, args.dim)))


if __name__ == "__main__":
    main()
