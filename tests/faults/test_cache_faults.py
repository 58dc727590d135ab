"""Damaged caches are refused when opened, concurrent writers never corrupt one, and a killed
writer leaves nothing a reader would take for data (issue 12 item 3, issue 14).

Each test breaks a complete cache behind the library's back (a deleted shard, a truncated or
foreign index, swapped shard directories, a torn commit record, an edited manifest) and checks
the reader refuses it at open time with a message that says to run `madcache cache verify`, and
that `verify` itself reports the damage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.cache.commits import commit_key, read_commits
from madcache.cache.reader import open_cache
from madcache.cache.store import LocalStore
from madcache.cache.verify import verify_cache
from madcache.cache.writer import CacheWriter
from madcache.cli import cli
from madcache.core.errors import CacheCorruptError, CacheError

CPU = {"device": "cpu", "compute_dtype": "float32", "device_name": "x86_64"}
GPU = {"device": "cuda", "compute_dtype": "bfloat16", "device_name": "H100"}


@pytest.fixture(params=["zarr", "hdf5"])
def fmt(request) -> str:
    return request.param


@pytest.fixture
def world(faults):
    return faults.make_world()


@pytest.fixture
def root(tmp_path, world, fmt, faults):
    faults.write_world(tmp_path / "c", world, fmt=fmt)
    return tmp_path / "c"


def refused(root, match: str) -> str:
    """Opening the cache raises CacheCorruptError naming `match` and `madcache cache verify`."""
    with pytest.raises(CacheCorruptError, match=match) as info:
        open_cache(root)
    message = str(info.value)
    assert f"madcache cache verify {root}" in message and "\n" not in message
    return message


def edit_manifest(root, change) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------- damaged at rest


def test_a_sound_cache_opens_and_loads(root, world):
    cache = open_cache(root)
    targets = cache.load_targets([e.id for e in world.examples[::-1]])
    assert targets.example_ids[0] == world.examples[-1].id


def test_missing_shard_is_refused_at_open(root, fmt):
    from madcache.cache.backends import get_backend

    get_backend(fmt).remove(get_backend(fmt).shard_path(root, 1))
    refused(root, r"shard\(s\) 1 listed in the manifest are missing on disk")
    assert "shard 1 is listed in the manifest but missing on disk" in verify_cache(root)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage"])
def test_broken_index_is_refused_at_open(root, damage):
    index = root / "index.parquet"
    if damage == "deleted":
        index.unlink()
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    else:
        index.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    refused(root, "index.parquet is missing or unreadable")
    assert any("index.parquet" in p for p in verify_cache(root))


def test_index_of_another_extraction_is_refused_at_open(tmp_path, root, fmt, faults):
    other = faults.make_world(seed=1)
    for e in other.examples:  # same shapes, other example ids
        e.id = e.id.replace("ex-", "other-")
    faults.write_world(tmp_path / "other", other, fmt=fmt)
    shutil.copy(tmp_path / "other" / "index.parquet", root / "index.parquet")
    refused(root, "the ids of shard 0 are not the ids the manifest recorded")


def test_index_rows_pointing_at_other_examples_are_refused_at_open(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(root / "index.parquet")
    rows = table.column("row").to_numpy().copy()
    first = np.flatnonzero(table.column("shard").to_numpy() == 0)[:2]
    rows[first] = rows[first[::-1]]  # two ids of shard 0 swap rows
    table = table.set_column(table.schema.get_field_index("row"), "row", pa.array(rows))
    pq.write_table(table, root / "index.parquet")
    refused(root, "the ids of shard 0 are not the ids the manifest recorded")


def test_swapped_shards_are_caught_when_targets_load(root, fmt, world):
    """Manifest and index agree with each other, but the shard directories were swapped: the
    reader's checksum check refuses the first shard it reads, before any row is used."""
    from madcache.cache.backends import get_backend

    backend = get_backend(fmt)
    zero, one = backend.shard_path(root, 0), backend.shard_path(root, 1)
    zero.rename(root / "swap")
    one.rename(zero)
    (root / "swap").rename(one)
    cache = open_cache(root)
    for shard, ids in ((0, [e.id for e in world.shards[0]]), (1, [world.shards[1][0].id])):
        with pytest.raises(
            CacheCorruptError,
            match=rf"shard {shard} does not hold what its "
            r"extraction recorded: [\w/]+ (has shape|"
            r"checksum mismatch).*madcache cache verify",
        ):
            cache.load_targets(ids)
    assert any("checksum mismatch" in p for p in verify_cache(root))


def test_each_row_block_is_verified_once_per_process(root, fmt, world, monkeypatch):
    """Verified reads with row digests (format version 3): a load hashes only the row blocks it
    reads, each once per process (loading the same rows again hashes nothing; rows first
    needed later are checked then), and no array is hashed whole."""
    import madcache.cache.rowtree as rowtree
    import madcache.cache.verified as verified

    cache = open_cache(root)
    whole, blocks = [], []
    monkeypatch.setattr(verified, "array_problems", lambda name, *a: whole.append(name) or [])
    real = rowtree.leaf_hashes
    monkeypatch.setattr(
        rowtree,
        "leaf_hashes",
        lambda array, block, *w: blocks.append(block) or real(array, block, *w),
    )
    ids = [e.id for e in world.shards[0]]
    first = cache.load_targets(ids[:2], needs=("image",))
    checked = len(blocks)
    assert checked > 0
    cache.load_targets(ids[:2], needs=("image",))
    assert len(blocks) == checked
    again = cache.load_targets(ids, needs=("image", "text_eos"))
    assert len(blocks) > checked and whole == []
    np.testing.assert_array_equal(again.image[:2], first.image)
    assert list(cache.verified.record()) == [backend_name(fmt, 0)]


def backend_name(fmt: str, shard: int) -> str:
    from madcache.cache.backends import get_backend

    return get_backend(fmt).shard_path(Path("."), shard).name


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["shards"].pop(), "the manifest lists shards 0, 1, planned 0..2"),
        (lambda m: m["shards"].append(m["shards"][0]), "the manifest lists a shard twice"),
        (lambda m: m["fingerprint"]["teachers"].clear(), "fingerprint_digest does not match"),
    ],
)
def test_edited_manifest_is_refused_at_open(root, edit, match):
    edit_manifest(root, edit)
    refused(root, match)


def test_mixed_precisions_are_refused_at_open(root):
    def mix(manifest):
        manifest["shards"][0]["writer"]["precision"] = GPU

    edit_manifest(root, mix)
    refused(root, r"mixes shards made under different precisions \(cuda/bfloat16: shards 0")


def test_cache_info_still_shows_a_damaged_cache(root):
    (root / "index.parquet").unlink()
    result = CliRunner().invoke(cli, ["cache", "info", str(root)])
    assert result.exit_code == 0 and "examples" in result.output


def test_torn_commit_record_is_reported(tmp_path, world, faults):
    root = tmp_path / "c"
    faults.write_world(root, world, fmt="zarr", finish=False, shards=[0, 1])
    (root / commit_key(1)).write_text('{"index": 1, "arr')
    with pytest.raises(CacheCorruptError, match="commits/00001.json is not valid JSON"):
        CacheWriter.open(root, manifest=faults.make_manifest(), format="zarr")
    assert any("commits/00001.json is not valid JSON" in p for p in verify_cache(root))


# ----------------------------------------------------------------------------- writers


def test_finish_of_an_unfinished_cache_is_one_line_naming_the_shards(tmp_path, world, faults):
    root = tmp_path / "c"
    faults.write_world(root, world, fmt="zarr", finish=False, shards=[0, 2])
    result = CliRunner().invoke(cli, ["cache", "finish", str(root)])
    assert result.exit_code == 2, result.output
    assert "1 of 3 shards are not committed yet (shards 1)" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(CacheError, match=r"2/3 shards committed\): resume the extraction"):
        open_cache(root)


def test_shards_of_another_precision_are_refused_when_writing(tmp_path, world, faults):
    root = tmp_path / "c"
    first = CacheWriter.open(
        root,
        manifest=faults.make_manifest(),
        format="zarr",
        identity={"rank": 0, "world_size": 2, "precision": CPU},
    )
    first.write_shard(0, world.shard_arrays(0))
    with pytest.raises(
        CacheError,
        match=r"another precision \(cpu/float32, shards 0\) than "
        r"this run \(cuda/bfloat16\)",
    ):
        CacheWriter.open(
            root,
            manifest=faults.make_manifest(),
            format="zarr",
            identity={"rank": 1, "world_size": 2, "precision": GPU},
        )


def test_a_claimed_shard_is_not_claimed_twice(tmp_path, faults):
    a = CacheWriter.open(tmp_path / "c", manifest=faults.make_manifest(), format="zarr")
    b = CacheWriter.open(tmp_path / "c", manifest=faults.make_manifest(), format="zarr")
    assert a.claim(1) and not b.claim(1) and b.claim(2)
    a.release(1)
    assert b.claim(1)


def test_a_killed_claimer_leaves_no_stale_claim(tmp_path, faults):
    """The claim is a kernel lock: SIGKILL frees it, no lease or cleanup needed."""
    writer = CacheWriter.open(tmp_path / "c", manifest=faults.make_manifest(), format="zarr")
    hold = (
        "import sys, time\nfrom madcache.cache.store import LocalStore\n"
        "held = LocalStore(sys.argv[1]).claim('claims/00001', wait=False)\nassert held\n"
        "print('held', flush=True)\ntime.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "c")],
        stdout=subprocess.PIPE,
        text=True,
        env=faults.child_env(),
    )
    assert child.stdout.readline().strip() == "held"
    assert not writer.claim(1)
    faults.kill(child)
    assert writer.claim(1, wait=False)


def test_two_writers_of_one_shard_at_once_commit_it_once(tmp_path, world, faults):
    root = tmp_path / "c"
    writers = [
        CacheWriter.open(root, manifest=faults.make_manifest(), format="hdf5") for _ in range(2)
    ]
    threads = [
        threading.Thread(target=w.write_shard, args=(0, world.shard_arrays(0))) for w in writers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(read_commits(LocalStore(root))) == [0]
    for s in (1, 2):
        writers[0].write_shard(s, world.shard_arrays(s))
    writers[0].finish()
    assert verify_cache(root) == []


def test_a_writer_killed_before_its_commit_leaves_no_data_a_reader_takes(tmp_path, world, faults):
    """Killed after the shard's arrays and index part are in place but before the commit
    record: the shard is not committed, and the next writer removes and redoes it."""
    root = tmp_path / "c"
    faults.write_world(root, world, fmt="zarr", finish=False, shards=[0])
    script = (
        "import json, sys, time, numpy as np\n"
        "import madcache.cache.writer as w\n"
        "def stop(store, record):\n    print('stopped', flush=True); time.sleep(60)\n"
        "w.write_commit = stop\n"
        "writer = w.CacheWriter.open(sys.argv[1], manifest=json.loads(sys.argv[2]))\n"
        "writer.write_shard(1, {'example_id': np.array(['half', 'done'])})\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(root), json.dumps(faults.make_manifest())],
        stdout=subprocess.PIPE,
        text=True,
        env=faults.child_env(),
    )
    assert child.stdout.readline().strip() == "stopped"
    faults.kill(child)
    assert (root / "shard-00001.zarr").exists() and (root / "index-parts/00001.parquet").exists()
    with pytest.raises(CacheError, match="1/3 shards committed"):
        open_cache(root)
    resumed = CacheWriter.open(root, manifest=faults.make_manifest(), format="zarr")
    assert resumed.completed_shards() == {0}
    assert not (root / "shard-00001.zarr").exists()
    for s in (1, 2):
        resumed.write_shard(s, world.shard_arrays(s), world.index_columns(s))
    resumed.finish()
    assert verify_cache(root) == []


class _Touch:
    """Unpickling this creates the file `path`: the sign that a pickle ran."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _pickle_shard(shard: Path, marker: Path) -> None:
    """Rewrite a Zarr shard as a Zarr v2 group whose `example_id` is an object array behind
    numcodecs' pickle filter (its chunk would create `marker` if unpickled); the numeric
    arrays are kept as v2 arrays."""
    import pickle

    import zarr

    source = zarr.open_group(str(shard), mode="r")
    arrays = {
        name: np.asarray(node[...])
        for name, node in source.members(max_depth=None)
        if isinstance(node, zarr.Array)
    }
    shutil.rmtree(shard)
    group = zarr.open_group(str(shard), mode="w", zarr_format=2)
    for name, array in arrays.items():
        if array.dtype.kind not in "UOT":
            group.create_array(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=array.shape,
                compressors=None,
                filters=None,
            )[...] = array
    (shard / "example_id").mkdir()
    n = len(arrays["example_id"])
    (shard / "example_id" / ".zarray").write_text(
        json.dumps(
            {
                "zarr_format": 2,
                "shape": [n],
                "chunks": [n],
                "dtype": "|O",
                "compressor": None,
                "fill_value": 0,
                "filters": [{"id": "pickle", "protocol": 4}],
                "order": "C",
            }
        )
    )
    (shard / "example_id" / "0").write_bytes(
        pickle.dumps(np.array([_Touch(marker)] * n, dtype=object))
    )


def test_a_zarr_v2_shard_with_a_pickle_codec_is_one_line_and_never_unpickled(
    tmp_path, world, faults
):
    root = tmp_path / "c"
    faults.write_world(root, world, fmt="zarr")
    marker = tmp_path / "unpickled"
    _pickle_shard(root / "shard-00000.zarr", marker)
    result = CliRunner().invoke(cli, ["cache", "verify", str(root)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "PROBLEM: shard 0: unreadable (ValueError: No Zarr data type found that matches "
        "{'name': '|O', 'object_codec_id': 'pickle'})",
        f"1 problem(s) in {root}",
    ]
    ids = [e.id for e in world.shards[0]]
    # its numeric rows are checked by their row digests; the ids are not read (the index was
    # checked against the manifest's ids when opened), so nothing is unpickled
    assert open_cache(root).load_targets(ids).example_ids == ids and not marker.exists()
    with pytest.raises(
        CacheCorruptError, match="shard 0 does not hold what its extraction recorded: unreadable"
    ) as raised:  # a reader whose index was not checked reads the ids: refused, not unpickled
        open_cache(root, check=False).load_targets(ids)
    assert "\n" not in str(raised.value) and not marker.exists()
