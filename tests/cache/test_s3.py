"""Caches in an S3-compatible object store (moto's real HTTP server on localhost): the small-object
store and its leases, the commit protocol without rename, verify, and one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cache.commits import read_commits
from madcache.cache.location import open_location
from madcache.cache.reader import open_cache
from madcache.cache.verify import verify_cache
from madcache.cache.writer import CacheWriter
from madcache.cli import cli
from madcache.core.errors import CacheError

pytestmark = pytest.mark.timeout(300)


def store_of(url: str):
    return open_location(url).store


# ----------------------------------------------------------------------------- small objects


def test_create_is_conditional_and_write_replaces(s3_bucket):
    store = store_of(f"{s3_bucket}/c")
    assert store.create("manifest.json", b"first")
    assert not store.create("manifest.json", b"second")  # If-None-Match: * refused it
    assert store.read_bytes("manifest.json") == b"first"
    store.write_bytes("manifest.json", b"third")
    assert store.read_bytes("manifest.json") == b"third"
    with pytest.raises(FileNotFoundError):
        store.read_bytes("absent.json")


def test_list_folders_delete_tree_and_size(s3_bucket):
    store = store_of(f"{s3_bucket}/c")
    for key in (
        "commits/00000.json",
        "commits/00001.json",
        "shard-00000.zarr/zarr.json",
        "shard-00000.zarr/a/c/0",
    ):
        store.write_bytes(key, b"12345")
    assert store.list("commits") == ["commits/00000.json", "commits/00001.json"]
    assert store.list("") == ["commits", "shard-00000.zarr"]
    assert store.exists("shard-00000.zarr") and store.exists("commits/00001.json")
    assert store.size("shard-00000.zarr") == 10 and store.size("") == 20
    store.delete_tree("shard-00000.zarr")
    assert not store.exists("shard-00000.zarr") and store.list("") == ["commits"]


# ----------------------------------------------------------------------------- leases


def test_a_lease_is_exclusive_until_released(s3_bucket):
    store = store_of(f"{s3_bucket}/c")
    held = store.claim("claims/00003", wait=False)
    assert held is not None and held.held
    assert store.claim("claims/00003", wait=False) is None
    held.release()
    assert not store.exists("claims/00003")
    again = store.claim("claims/00003", wait=False)
    assert again is not None
    again.release()


def test_an_expired_lease_of_another_host_is_taken_over(s3_bucket):
    store = store_of(f"{s3_bucket}/c")
    live = {"owner": "x", "host": "elsewhere", "pid": 1, "expires": time.time() + 60}
    store.write_bytes("claims/00001", json.dumps(live).encode())
    assert store.claim("claims/00001", wait=False) is None  # another host, not expired
    store.write_bytes("claims/00001", json.dumps({**live, "expires": time.time() - 1}).encode())
    taken = store.claim("claims/00001", wait=False)
    assert taken is not None
    assert json.loads(store.read_bytes("claims/00001"))["pid"] == os.getpid()
    taken.release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(s3_bucket):
    store = store_of(f"{s3_bucket}/c")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = {
        "owner": "x",
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "expires": time.time() + 600,
    }
    store.write_bytes("claims/00002", json.dumps(record).encode())
    taken = store.claim("claims/00002", wait=False)
    assert taken is not None
    taken.release()


def test_a_held_lease_is_renewed(s3_bucket):
    from madcache.cache.objectstore import S3Store

    store = S3Store(f"{s3_bucket}/c", lease_seconds=0.6)
    held = store.claim("claims/00004", wait=False)
    first = json.loads(store.read_bytes("claims/00004"))["expires"]
    time.sleep(0.9)
    assert json.loads(store.read_bytes("claims/00004"))["expires"] > first
    assert store.claim("claims/00004", wait=False) is None and not held.lost
    held.release()


# ----------------------------------------------------------------------------- caches


def test_a_cache_in_s3_equals_the_same_cache_on_disk(s3_bucket, tmp_path, cache_helpers):
    world = cache_helpers.make_world()
    cache_helpers.write_world(tmp_path / "disk", world, fmt="zarr")
    cache_helpers.write_world(f"{s3_bucket}/cache", world, fmt="zarr")
    disk, s3 = open_cache(tmp_path / "disk"), open_cache(f"{s3_bucket}/cache")
    assert str(s3.path) == f"{s3_bucket}/cache" and s3.complete
    for name, array in disk.arrays().items():
        np.testing.assert_array_equal(s3.arrays()[name], array, err_msg=name)
    ids = disk.example_ids()[::3][::-1]
    want, got = disk.load_targets(ids), s3.load_targets(ids)
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.text_eos, want.text_eos)
    np.testing.assert_array_equal(got.words.feat, want.words.feat)
    np.testing.assert_array_equal(got.logits["kmeans"], want.logits["kmeans"])
    assert s3.manifest["fingerprint_digest"] == disk.manifest["fingerprint_digest"]
    assert verify_cache(f"{s3_bucket}/cache") == []
    assert not [k for k in store_of(f"{s3_bucket}/cache").list("") if "tmp" in k]  # no renames
    info = s3.info()
    assert info["path"] == f"{s3_bucket}/cache" and info["shards"] == 3
    assert (
        info["bytes"]
        == sum(
            store_of(f"{s3_bucket}/cache").size(k) for k in store_of(f"{s3_bucket}/cache").list("")
        )
        > 0
    )


def test_a_half_written_shard_is_not_complete_and_is_redone(s3_bucket, cache_helpers):
    world = cache_helpers.make_world()
    url = f"{s3_bucket}/cache"
    writer = cache_helpers.write_world(url, world, fmt="zarr", finish=False, shards=[0, 1])
    # shard 2's arrays and index part in place, as a writer killed before its commit leaves it
    writer.backend.write(writer.backend.shard_path(writer.root, 2), world.shard_arrays(2))
    store = store_of(url)
    assert store.exists("shard-00002.zarr") and sorted(read_commits(store)) == [0, 1]
    with pytest.raises(CacheError, match="incomplete .*2/3 shards committed"):
        open_cache(url)
    with pytest.raises(CacheError, match="1 of 3 shards are not committed"):
        writer.finish()
    assert any("shard 2 is on disk but not committed" in p for p in verify_cache(url))
    reopened = CacheWriter.open(url, manifest=cache_helpers.make_manifest(), format="zarr")
    assert reopened.completed_shards() == {0, 1}
    assert not store.exists("shard-00002.zarr")  # the resume removed the leftover
    reopened.write_shard(2, world.shard_arrays(2), index_columns=world.index_columns(2))
    result = CliRunner().invoke(cli, ["cache", "finish", url])
    assert result.exit_code == 0, result.output
    assert verify_cache(url) == [] and open_cache(url).complete


def test_a_flipped_byte_in_an_object_fails_verify(s3_bucket, cache_helpers):
    url = f"{s3_bucket}/cache"
    cache_helpers.write_world(url, cache_helpers.make_world(), fmt="zarr")
    store = store_of(url)
    chunk = next(k for k in _keys(store, "shard-00001.zarr/image_feat") if "/c/" in k)
    data = bytearray(store.read_bytes(chunk))
    data[5] ^= 0x40
    store.write_bytes(chunk, bytes(data))
    problems = verify_cache(url)
    assert problems == ["shard 1: image_feat checksum mismatch (stored bytes changed)"]


def test_hdf5_in_an_object_store_is_refused(s3_bucket, cache_helpers):
    with pytest.raises(CacheError, match="object store are stored as zarr"):
        CacheWriter.open(f"{s3_bucket}/h", manifest=cache_helpers.make_manifest(), format="hdf5")


def _keys(store, prefix: str) -> list[str]:
    import obstore

    return [o["path"] for batch in obstore.list(store.client, prefix) for o in batch]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("case", ["no bucket", "unreachable"])
def test_an_unusable_store_is_one_line_naming_the_url(s3_bucket, monkeypatch, case):
    url = f"{s3_bucket}/cache"
    if case == "no bucket":
        url = "s3://no-such-bucket-here/cache"
    # a port held bound but never listening: connections to it are refused, and no server of
    # another test (pytest -n) can take it meanwhile
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        if case == "unreachable":
            port = closed.getsockname()[1]
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        for command in (["cache", "info", url], ["cache", "verify", url]):
            result = CliRunner().invoke(cli, command)
            assert result.exit_code == 2, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and url in lines[0], result.output
            expected = {"no bucket": "bucket does not exist", "unreachable": "cannot be reached"}
            assert expected[case] in lines[0], lines[0]
