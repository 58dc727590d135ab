"""Caches in an S3-compatible object store vs on disk: `load_targets` of a 3% low-shot subset and
whole-shard reads, from moto's S3 server on localhost (a real HTTP server), side by side.

The same synthetic VCR-like cache as benchmarks/bench_cache_read.py is written to a local
directory and to `s3://bench/cache`. Reads go through the chosen client, obstore
(`zarr.storage.ObjectStore`); when s3fs is installed the same reads also go through
`zarr.storage.FsspecStore` for the comparison (the small objects, manifest and index, go through
obstore in both). Each figure is the best of `--repeat` runs; ratios are the result (a shared
2-core machine, and a local server: no network latency, so real S3 costs more per request).

    python benchmarks/bench_s3.py [--per-shard 600] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cache_read as synthetic  # noqa: E402

from madcache.cache.objectstore import S3Store  # noqa: E402
from madcache.cache.reader import open_cache  # noqa: E402
from madcache.cache.store import StoreKey  # noqa: E402


class FsspecS3Store(S3Store):
    """The same store with its arrays read through s3fs (fsspec) instead of obstore."""

    def zarr_store(self):
        import s3fs
        from zarr.storage import FsspecStore

        fs = s3fs.S3FileSystem(
            key=os.environ["AWS_ACCESS_KEY_ID"],
            secret=os.environ["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=os.environ["AWS_ENDPOINT_URL"],
            asynchronous=True,
            client_kwargs={"region_name": "us-east-1"},
        )
        return FsspecStore(fs, path=f"{self.bucket}/{self.prefix}")


def start_server() -> tuple[object, str]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
    )
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return server, endpoint


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def subset(root, fraction: float) -> list[str]:
    ids = open_cache(root).example_ids()
    rng = np.random.default_rng(1)
    return sorted(rng.choice(ids, max(1, int(fraction * len(ids))), replace=False).tolist())


def measure(
    name: str, where, ids: list[str], repeat: int, expected=None
) -> tuple[str, float, float]:
    targets = open_cache(where).load_targets(ids)
    if expected is not None:  # every reader returns the same values
        np.testing.assert_array_equal(targets.words.feat, expected.words.feat)
        np.testing.assert_array_equal(targets.image, expected.image)
    subset_s = best(lambda: open_cache(where).load_targets(ids), repeat)
    cache = open_cache(where)
    shard = cache._shard_path(cache.shards[0])
    whole_s = best(lambda: cache.backend.read(shard), repeat)
    return name, subset_s, whole_s


def main() -> None:
    try:
        import moto.server  # noqa: F401
        import obstore  # noqa: F401
    except ImportError:
        print("skipped: needs pip install 'madcache[s3,s3-test]' (obstore, moto[server])")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-shard", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    synthetic.PER_SHARD = args.per_shard
    server, endpoint = start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            disk = Path(tmp) / "cache"
            write_disk = synthetic.build(disk, "zarr")
            write_s3 = synthetic.build("s3://bench/cache", "zarr")
            ids = subset(disk, synthetic.FRACTION)
            shard_mb = open_cache(disk).shards[0]["bytes"] / 2**20
            expected = open_cache(disk).load_targets(ids)
            rows = [
                measure("disk (zarr LocalStore)", disk, ids, args.repeat),
                measure("s3 obstore (chosen)", "s3://bench/cache", ids, args.repeat, expected),
            ]
            try:
                import s3fs  # noqa: F401

                fsspec_root = StoreKey(FsspecS3Store("s3://bench/cache"))
                rows.append(measure("s3 s3fs/fsspec", fsspec_root, ids, args.repeat, expected))
            except ImportError:
                print("s3fs not installed: fsspec comparison skipped")
    finally:
        server.stop()
    print(
        f"cache: {synthetic.SHARDS} shards x {synthetic.PER_SHARD} examples, subset "
        f"{len(ids)} ids ({synthetic.FRACTION:.0%}); server {endpoint}; write disk "
        f"{write_disk:.2f} s, write s3 {write_s3:.2f} s ({write_s3 / write_disk:.1f}x); "
        f"a shard is {shard_mb:.0f} MiB"
    )
    disk_subset, disk_whole = rows[0][1], rows[0][2]
    print(f"{'reader':<24} {'load_targets 3%':>16} {'x disk':>7} {'whole shard':>12} {'x disk':>7}")
    for name, subset_s, whole_s in rows:
        print(
            f"{name:<24} {subset_s:>14.3f} s {subset_s / disk_subset:>6.1f}x "
            f"{whole_s:>10.3f} s {whole_s / disk_whole:>6.1f}x"
        )
    if len(rows) == 3:
        print(
            f"s3fs / obstore: load_targets {rows[2][1] / rows[1][1]:.2f}x, whole shard "
            f"{rows[2][2] / rows[1][2]:.2f}x (above 1: obstore is faster)"
        )


if __name__ == "__main__":
    main()
