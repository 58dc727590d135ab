"""Sparse low-shot loads from a full-size cache, the verification a run does included.

`bench_scale.py` times a low-shot subset's target load after `setup`, whose check of every
shard the run will read (`train.setup.verify_reads`) is not counted. This bench counts it: per
checkout (`--code`, and `--compare`: "before") and format, in a fresh process,

- `write`: the cache written by that checkout (`bench_scale.write_cache`, 1,024 examples per
  shard): seconds, bytes on disk;
- `md`: a low-shot MD run (`--shots` per category): its check ahead of the first step (the
  cache's part of `verify_reads`) and its target load; rows/s over both, bytes read (read()
  bytes, /proc/self/io) / bytes used, projected to D = 512 (`bench_scale.projected`);
- `mad`: MAD's task stage on the same subset, checked as `verify_reads` checks it (a fresh
  opened cache) and loaded by the run's loader (chosen words' features only);
- `load`: a random 3% of the ids with MD's needs (`bench_scale.measure_load`, hdf5 and zarr),
  rows/s (best of 3) and per CPU second.

The dataset files and region store are written once; each checkout writes its own caches
(a version 3 cache is not readable by a checkout from before row digests).

    python benchmarks/bench_sparse.py --dataset vcr --compare /work/main
    python benchmarks/bench_sparse.py --dataset vcr --fraction 0.1 --dim 512 --shots 6 \\
        --measures lowshot --compare /work/main   # at D = 512, the density of 64 per category
    python benchmarks/bench_sparse.py --dataset snli-ve --measures load --formats hdf5 \\
        --compare /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_scale as scale  # noqa: E402

MEASURES = ("md", "mad", "load")


def write(folder: Path, dataset: str, fmt: str, dim: int, words: int) -> dict:
    examples = json.loads((folder / "examples.json").read_text())
    started = time.perf_counter()
    scale.write_cache(
        folder / fmt, dataset, folder / "data", examples, fmt=fmt, dim=dim, words=words
    )
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (folder / fmt).rglob("*") if p.is_file())
    return {"write_s": round(seconds, 1), "disk_mb": round(size / 2**20, 1)}


class Ahead:
    """Bytes read and seconds spent in `VerifiedShards.ahead` on the teacher-target cache."""

    bytes = 0
    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        from madcache.cache.verified import VerifiedShards

        original = VerifiedShards.ahead

        def ahead(self, ids, names):
            if self.cache.manifest.get("kind") == "regions":
                return original(self, ids, names)
            read0, started = scale.bytes_read(), time.perf_counter()
            try:
                return original(self, ids, names)
            finally:
                cls.bytes += scale.bytes_read() - read0
                cls.seconds += time.perf_counter() - started

        VerifiedShards.ahead = ahead


def checked_load(load, examples, dim: int, ahead_bytes: int, ahead_s: float) -> dict:
    """A load of `examples`, with the check done ahead of it (bytes, seconds) counted."""
    read0, started, cpu = scale.bytes_read(), time.perf_counter(), time.process_time()
    targets = load(examples)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    feature, other = scale.used_bytes(examples, targets, dim)
    read = scale.bytes_read() - read0
    return {
        "rows": len(examples),
        "rows_per_s": round(len(examples) / (seconds + ahead_s)),
        "load_rows_per_s": round(len(examples) / seconds),
        "load_rows_per_cpu_s": round(len(examples) / max(cpu, 1e-6)),
        "check_s": round(ahead_s, 3),
        "load_s": round(seconds, 3),
        "check_bytes": ahead_bytes,
        "load_bytes": read,
        "bytes_read": ahead_bytes + read,
        "bytes_used": feature + other,
        "feature_bytes": feature,
    }


def measure_lowshot(folder: Path, dataset: str, fmt: str, shots: int, dim: int) -> dict:
    """MD's run (setup's check ahead + its load), then MAD's task stage on the same subset,
    checked and loaded as its run would (a fresh opened cache)."""
    from madcache.cache.gather import arrays_for
    from madcache.cache.reader import open_cache
    from madcache.method.methods import TASK, get_method
    from madcache.train.setup import target_loader

    Ahead.install()
    built = scale.run_setup(folder, dataset, "md", shots, fmt)
    source = built.task_source
    examples = [source.examples[i] for i in source.chunks[0]]
    md = checked_load(source.load, examples, dim, Ahead.bytes, Ahead.seconds)
    method = get_method("mad").only(TASK)
    cache = open_cache(built.config.cache)
    cache.index()
    loader = target_loader(built.config, method, cache)
    names = {n for e in cache.shards for n in e.get("arrays", {})}
    read0, started = scale.bytes_read(), time.perf_counter()
    cache.verified.ahead(
        [ex.id for ex in examples], arrays_for(method.needs, names) | {"example_id"}
    )
    mad = checked_load(
        loader, examples, dim, scale.bytes_read() - read0, time.perf_counter() - started
    )
    return {"md": md, "mad": mad, "shards": len(cache.shards)}


def measure(kind: str, folder: Path, dataset: str, fmt: str, args) -> dict:
    if kind == "write":
        return write(folder, dataset, fmt, args.dim, args.words)
    if kind == "lowshot":
        return measure_lowshot(folder, dataset, fmt, args.shots, args.dim)
    ids = [eid for eid, _ in json.loads((folder / "examples.json").read_text())]
    result = scale.measure_load(folder, ids, args.dim)
    return {k: v for k, v in result.items() if k == "rows" or k.startswith(fmt)}


def in_process(code: Path, kind: str, folder: Path, dataset: str, fmt: str, args) -> dict:
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, __file__, "--measure", kind, "--folder", str(folder)]
    command += ["--dataset", dataset, "--formats", fmt, "--shots", str(args.shots)]
    command += ["--dim", str(args.dim), "--words", str(args.words)]
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {fmt} ({code}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_data(folder: Path, dataset: str, n: int) -> None:
    examples = scale.WRITERS[dataset](folder / "data", n, np.random.default_rng(0))
    examples.sort(key=lambda e: e[1])
    (folder / "examples.json").write_text(json.dumps(examples))
    scale.write_regions(folder / "regions", list(dict.fromkeys(image for _, image in examples)))


def table(results: list[dict], dim: int) -> list[str]:
    lines = [
        "| code | format | load | rows/s (check + load) | load rows/s | check s | "
        f"read/used D={dim} | read/used D=512 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["measure"] != "lowshot":
            continue
        for kind in ("md", "mad"):
            x = r[kind]
            lines.append(
                f"| {r['code']} | {r['format']} | {kind} | {x['rows_per_s']:,} | "
                f"{x['load_rows_per_s']:,} | {x['check_s']} | "
                f"{x['bytes_read'] / max(x['bytes_used'], 1):,.2f} | "
                f"{scale.projected(x, dim):,.3f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="vcr", choices=sorted(scale.SIZES))
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--words", type=int, default=6)
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--formats", default="zarr,hdf5")
    parser.add_argument("--measures", default="lowshot,load")
    parser.add_argument("--repeat", type=int, default=1, help="of the load measure")
    parser.add_argument("--code", default=str(HERE.parent))
    parser.add_argument("--compare", default=None)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = args.formats.split(",")
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.folder), args.dataset, formats[0], args)))
        return
    codes = [Path(args.code)] + ([Path(args.compare)] if args.compare else [])
    n = max(scale.SHARD, int(scale.SIZES[args.dataset] * args.fraction))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_data(root, args.dataset, n)
        for code in codes:
            folder = root / code.name
            folder.mkdir()
            for name in ("data", "regions", "examples.json"):
                (folder / name).symlink_to(root / name)
            for fmt in formats:
                for kind in ["write", *args.measures.split(",")]:
                    repeats = args.repeat if kind == "load" else 1
                    for _ in range(repeats):
                        result = in_process(code, kind, folder, args.dataset, fmt, args)
                        result = {"code": code.name, "format": fmt, "measure": kind, **result}
                        results.append(result)
                        print(json.dumps(result), flush=True)
                subprocess.run(["rm", "-rf", str(folder / fmt)], check=False)
    print("\n".join(table(results, args.dim)))


if __name__ == "__main__":
    main()
