"""CacheWriter: atomic shards, commit records, resume, fingerprint refusal, force, finish."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from madcache.cache.commits import read_commits
from madcache.cache.manifest import FORMAT_VERSION, array_checksum, read_manifest
from madcache.cache.store import LocalStore
from madcache.cache.writer import CacheWriter
from madcache.core.errors import CacheCorruptError, CacheError, FingerprintMismatchError


def test_commit_records_hold_checksums_shapes_and_writer(tmp_path, world, fmt, cache_helpers):
    writer = cache_helpers.write_world(tmp_path / "c", world, fmt=fmt, finish=False, shards=[1])
    manifest = read_manifest(tmp_path / "c")
    assert manifest["state"] == "writing" and manifest["format"] == fmt
    assert manifest["shards"] == []  # while writing, the commit records say it
    (entry,) = read_commits(LocalStore(tmp_path / "c")).values()
    assert entry["writer"]["rank"] == 0 and entry["writer"]["world_size"] == 1
    arrays = world.shard_arrays(1)
    assert entry["index"] == 1 and entry["examples"] == len(world.shards[1])
    assert entry["words"] == int(arrays["word_offsets"][-1])
    for name, array in arrays.items():
        assert entry["arrays"][name]["shape"] == list(array.shape)
        assert entry["arrays"][name]["sha256"] == array_checksum(array)
    assert writer.completed_shards() == {1}
    back = writer.read_shard(1)
    np.testing.assert_array_equal(back["word_feat"], arrays["word_feat"])
    assert back["word_feat"].dtype == np.float16


def test_finish_builds_index_and_marks_complete(tmp_path, world, fmt, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt=fmt)
    manifest = read_manifest(tmp_path / "c")
    assert manifest["state"] == "complete"
    assert manifest["extra"] == {"kmeans_centres": world.centres, "kmeans_scale": 100.0}
    assert manifest["summary"] == {"seconds": 1.5}
    assert manifest["totals"]["examples"] == len(world.examples)
    table = pq.read_table(tmp_path / "c" / "index.parquet").to_pydict()
    assert table["example_id"] == [e.id for s in world.shards for e in s]
    assert table["shard"] == [i for i, s in enumerate(world.shards) for _ in s]
    assert table["row"] == [r for s in world.shards for r in range(len(s))]
    assert table["image_id"] == [e.image for s in world.shards for e in s]
    assert table["category"][:2] == world.index_columns(0)["category"][:2]
    assert table["label"][0] is None and table["label"][1] == 1


def test_resume_keeps_completed_and_removes_stale_temp(tmp_path, world, fmt, cache_helpers):
    root = tmp_path / "c"
    writer = cache_helpers.write_world(root, world, fmt=fmt, finish=False, shards=[0, 1])
    # a killed run: a half-written temp shard
    stale = writer.backend.temp_path(root, 2)
    writer.backend.write(stale, {"example_id": np.array(["half"])})
    reopened = CacheWriter.open(root, manifest=cache_helpers.make_manifest(), format=fmt)
    assert reopened.completed_shards() == {0, 1}
    assert not writer.backend.exists(stale)
    reopened.write_shard(2, world.shard_arrays(2), world.index_columns(2))
    reopened.finish()
    fresh = cache_helpers.write_world(tmp_path / "fresh", world, fmt=fmt)
    for name in ("example_id", "word_feat", "logits/iqa"):
        np.testing.assert_array_equal(reopened.read_shard(2)[name], fresh.read_shard(2)[name])
    assert pq.read_table(root / "index.parquet").equals(
        pq.read_table(tmp_path / "fresh" / "index.parquet")
    )


def test_renamed_shard_without_manifest_entry_is_redone(tmp_path, world, fmt, cache_helpers):
    root = tmp_path / "c"
    writer = cache_helpers.write_world(root, world, fmt=fmt, finish=False, shards=[0])
    # killed between the rename and the manifest update
    writer.backend.write(writer.backend.shard_path(root, 1), world.shard_arrays(1))
    reopened = CacheWriter.open(root, manifest=cache_helpers.make_manifest(), format=fmt)
    assert reopened.completed_shards() == {0}
    assert sorted(reopened.backend.shards_present(root)) == [0]


def test_different_fingerprint_names_the_key(tmp_path, world, fmt, cache_helpers):
    root = tmp_path / "c"
    cache_helpers.write_world(root, world, fmt=fmt, shards=[0], finish=False)
    with pytest.raises(FingerprintMismatchError) as info:
        CacheWriter.open(
            root, manifest=cache_helpers.make_manifest(checkpoint="cd" * 32), format=fmt
        )
    message = str(info.value)
    assert (
        "fingerprint.teachers.vision.checkpoint_sha256: 'abababababab..' != 'cdcdcdcdcdcd..'"
    ) in message
    assert "--force" in message and "--out" in message
    assert info.value.differences == [message.splitlines()[1].strip()]


def test_force_wipes(tmp_path, world, fmt, cache_helpers):
    root = tmp_path / "c"
    cache_helpers.write_world(root, world, fmt=fmt)
    writer = CacheWriter.open(
        root, manifest=cache_helpers.make_manifest(checkpoint="cd" * 32), format=fmt, force=True
    )
    assert writer.completed_shards() == set()
    assert not (root / "index.parquet").exists()
    assert writer.backend.shards_present(root) == {}
    assert (
        read_manifest(root)["fingerprint"]["teachers"]["vision"]["checkpoint_sha256"] == "cd" * 32
    )


def test_refuses_a_directory_that_is_not_a_cache(tmp_path, cache_helpers):
    (tmp_path / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(CacheError, match="not a madcache cache"):
            CacheWriter.open(tmp_path, manifest=cache_helpers.make_manifest(), force=force)
    assert (tmp_path / "notes.txt").exists()


def test_other_format_is_refused_without_force(tmp_path, world, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt="zarr", shards=[0], finish=False)
    with pytest.raises(CacheError, match="stored as zarr"):
        CacheWriter.open(tmp_path / "c", manifest=cache_helpers.make_manifest(), format="hdf5")


def test_duplicate_ids_across_shards(tmp_path, world, fmt, cache_helpers):
    writer = CacheWriter.open(tmp_path / "c", manifest=cache_helpers.make_manifest(), format=fmt)
    writer.write_shard(0, world.shard_arrays(0))
    writer.write_shard(1, world.shard_arrays(0))
    writer.write_shard(2, world.shard_arrays(2))
    with pytest.raises(CacheCorruptError, match="more than once"):
        writer.finish()


def test_inconsistent_shard_is_rejected_before_writing(tmp_path, world, cache_helpers):
    writer = CacheWriter.open(tmp_path / "c", manifest=cache_helpers.make_manifest())
    arrays = world.shard_arrays(0)
    arrays["word_offsets"] = arrays["word_offsets"][:-1]
    with pytest.raises(ValueError, match="word_offsets"):
        writer.write_shard(0, arrays)
    assert writer.completed_shards() == set()


def test_manifest_is_plain_json_with_digest(tmp_path, world, cache_helpers):
    from madcache.cache.fingerprint import digest

    cache_helpers.write_world(tmp_path / "c", world, fmt="zarr", shards=[0], finish=False)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["fingerprint_digest"] == digest(cache_helpers.make_manifest()["fingerprint"])
    assert manifest["format_version"] == FORMAT_VERSION == 3
    assert not list((tmp_path / "c").glob(".*tmp*"))


def test_finish_refuses_until_every_planned_shard_is_committed(tmp_path, world, fmt, cache_helpers):
    writer = cache_helpers.write_world(tmp_path / "c", world, fmt=fmt, finish=False, shards=[0, 2])
    with pytest.raises(CacheError, match=r"1 of 3 shards are not committed yet \(shards 1\)"):
        writer.finish()
    assert read_manifest(tmp_path / "c")["state"] == "writing"
    writer.write_shard(1, world.shard_arrays(1), world.index_columns(1))
    manifest = writer.finish()
    assert manifest["state"] == "complete" and [e["index"] for e in manifest["shards"]] == [0, 1, 2]
    assert manifest["shards"][1]["writer"]["host"]


def test_store_size_skips_files_another_rank_renames_mid_walk(tmp_path, monkeypatch):
    """`cache size` walks the folder while other ranks rename their temporary shards: a file
    gone between the listing and its stat counts 0 instead of failing the extraction."""
    import os

    from madcache.cache import store as store_module
    from madcache.cache.store import LocalStore

    (tmp_path / "shard-00000.zarr").mkdir()
    (tmp_path / "shard-00000.zarr" / "a").write_bytes(b"abc")
    real_walk = os.walk

    def walk_listing_a_vanished_file(top, *args, **kwargs):
        for folder, dirs, names in real_walk(top, *args, **kwargs):
            yield folder, dirs, [*names, "renamed-away"]

    monkeypatch.setattr(store_module.os, "walk", walk_listing_a_vanished_file)
    assert LocalStore(tmp_path).size("") == 3
