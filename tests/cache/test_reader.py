"""open_cache / Cache: load_targets against a loop-built reference, arrays(), checks, info."""

from __future__ import annotations

import numpy as np
import pytest

from madcache.cache.gather import ragged_index
from madcache.cache.reader import open_cache
from madcache.cache.rowtree import TREES, is_tree
from madcache.core.errors import (
    CacheError,
    CacheNotFoundError,
    FingerprintMismatchError,
    MissingTargetError,
)


@pytest.fixture
def cache(tmp_path, world, fmt, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt=fmt)
    return open_cache(tmp_path / "c")


def requested(world) -> list[str]:
    """Across shards, out of stored order, with a repeat."""
    ids = [e.id for e in world.examples]
    return [ids[7], ids[0], ids[22], ids[3], ids[7], ids[15], ids[1]]


def test_load_targets_matches_reference(cache, world, cache_helpers):
    ids = requested(world)
    targets = cache.load_targets(ids)
    by_id = {e.id: e for e in world.examples}
    assert targets.example_ids == ids and targets.num_choices == cache_helpers.C
    expected_image = np.stack([world.image_feat[by_id[i].image] for i in ids]).astype(np.float32)
    np.testing.assert_array_equal(targets.image, expected_image)
    assert targets.image.dtype == np.float32
    expected_eos = np.stack([[world.text_eos[t] for t in by_id[i].texts] for i in ids])
    np.testing.assert_array_equal(targets.text_eos, expected_eos.astype(np.float32))
    assert targets.text_eos.shape == (len(ids), cache_helpers.C, cache_helpers.DT)
    np.testing.assert_array_equal(targets.logits["iqa"], np.stack([by_id[i].logits for i in ids]))
    assert targets.default_logits == "iqa"
    assert targets.candidates is None


def test_ragged_words_in_scored_text_order(cache, world):
    ids = requested(world)
    words = cache.load_targets(ids).words
    expected = world.expected_words(ids)
    np.testing.assert_array_equal(words.offsets, expected["offsets"])
    np.testing.assert_array_equal(words.feat, expected["word_feat"].astype(np.float32))
    np.testing.assert_array_equal(words.span, expected["word_span"])
    np.testing.assert_array_equal(words.truncated, expected["word_truncated"])
    for field, name in (("vr", "word_vr"), ("yake", "word_yake"), ("score", "word_score")):
        np.testing.assert_array_equal(getattr(words, field), expected[name])
    assert words.feat.dtype == np.float32 and words.span.dtype == np.int32
    # text row n*C + c is example n's choice c
    n, c = 3, 2
    texts = {e.id: e for e in world.examples}[ids[n]].texts
    np.testing.assert_array_equal(
        words.span[words.text_slice(n * 3 + c)], world.words[texts[c]]["word_span"]
    )


def test_kmeans_logits_from_similarity_and_centres(cache, world):
    ids = requested(world)
    logits = cache.load_targets(ids).logits["kmeans"]
    by_id = {e.id: e for e in world.examples}
    for row, eid in enumerate(ids):
        for k, centre in enumerate(world.centres):
            assert logits[row, k] == pytest.approx(
                -100 * abs(by_id[eid].similarity - centre), abs=1e-4
            )


def test_empty_request_has_shapes(cache, cache_helpers):
    targets = cache.load_targets([])
    assert targets.image.shape == (0, cache_helpers.DV)
    assert targets.text_eos.shape == (0, cache_helpers.C, cache_helpers.DT)
    assert targets.words.offsets.tolist() == [0]
    assert targets.logits["kmeans"].shape == (0, 3)


def test_unknown_ids_are_listed(cache):
    with pytest.raises(MissingTargetError, match=r"2 of 3 example ids .*'nope-1', 'nope-2'"):
        cache.load_targets(["ex-000", "nope-1", "nope-2"])


def test_arrays_rebased_to_global_rows(cache, world):
    arrays = cache.arrays()
    ids = arrays["example_id"].tolist()
    assert ids == [e.id for s in world.shards for e in s]
    by_id = {e.id: e for e in world.examples}
    for n, eid in enumerate(ids):
        assert arrays["image_id"][arrays["example_image"][n]] == by_id[eid].image
        for c, row in enumerate(arrays["example_texts"][n]):
            text = by_id[eid].texts[c]
            assert arrays["text_key"][row] == text
            off = arrays["word_offsets"]
            np.testing.assert_array_equal(
                arrays["word_feat"][off[row] : off[row + 1]], world.words[text]["word_feat"]
            )
    assert arrays["word_offsets"][-1] == len(arrays["word_feat"])


def test_index_and_example_ids(cache, world):
    assert cache.example_ids() == [e.id for s in world.shards for e in s]
    assert set(cache.index().column_names) >= {
        "example_id",
        "shard",
        "row",
        "image_id",
        "category",
        "label",
    }


def test_missing_cache_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cache at .*madcache extract"):
        open_cache(tmp_path / "absent")
    with pytest.raises(CacheNotFoundError, match="holds no manifest.json"):
        open_cache(tmp_path)


def test_incomplete_cache_needs_allow_incomplete(tmp_path, world, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt="zarr", finish=False, shards=[0, 2])
    with pytest.raises(CacheError, match=r"incomplete .*2/3 shards"):
        open_cache(tmp_path / "c")
    cache = open_cache(tmp_path / "c", allow_incomplete=True)
    ids = [e.id for e in world.shards[2]][:2]
    np.testing.assert_array_equal(
        cache.load_targets(ids).logits["iqa"], np.stack([e.logits for e in world.shards[2][:2]])
    )


def test_check_compatible_compares_only_given_parts(cache, cache_helpers):
    fingerprint = cache_helpers.make_manifest()["fingerprint"]
    cache.check_compatible({"dataset": fingerprint["dataset"]})
    other = {**fingerprint["dataset"], "files": {"a.jsonl": "11"}}
    with pytest.raises(FingerprintMismatchError) as info:
        cache.check_compatible({"dataset": other})
    assert info.value.differences == ["fingerprint.dataset.files.a.jsonl: '11' != '00'"]
    with pytest.raises(FingerprintMismatchError, match="fingerprint.regions: 1 != <missing>"):
        cache.check_compatible({"regions": 1})


def test_info(cache, world, fmt):
    info = cache.info()
    assert info["examples"] == len(world.examples) and info["shards"] == 3
    assert info["images"] == sum(len({e.image for e in s}) for s in world.shards)
    assert info["format"] == fmt and info["state"] == "complete"
    assert info["bytes"] > 0 and len(info["fingerprint_digest"]) == 64
    assert info["arrays"]["image_feat"] == {"dtype": "float16", "row_shape": [6]}
    assert info["summary"] == {"seconds": 1.5}


def test_memory_backend_behind_the_same_reader(tmp_path, world, cache_helpers):
    cache_helpers.write_world(tmp_path / "m", world, fmt="memory")
    ids = requested(world)
    targets = open_cache(tmp_path / "m").load_targets(ids)
    np.testing.assert_array_equal(targets.words.offsets, world.expected_words(ids)["offsets"])


def test_ragged_index():
    assert ragged_index(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
    assert ragged_index(np.array([], int), np.array([], int)).tolist() == []


def test_targets_of_another_format_version_are_refused(tmp_path, world, cache_helpers):
    """Caches of format 1 hold token-selection scores that gave stopwords and punctuation a
    score, and SNLI-VE logits on the raw cosine scale: never reuse them silently."""
    import json

    cache_helpers.write_world(tmp_path / "c", world, fmt="hdf5")
    path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": 1}))
    cache = open_cache(tmp_path / "c")
    assert cache.info()["format_version"] == 1  # still inspectable
    with pytest.raises(
        CacheError,
        match=r"format version 1, but this madcache reads versions 2, 3.*"
        r"Re-extract",
    ):
        cache.load_targets(requested(world))


@pytest.mark.parametrize(
    "needs, read, empty",
    [
        (("image",), {"example_id", "example_image", "image_feat"}, ("text_eos", "words")),
        (
            ("image", "text_eos"),
            {"example_id", "example_image", "example_texts", "image_feat", "text_eos"},
            ("words",),
        ),
        (
            ("logits",),
            {"example_id", "candidates", "similarity", "logits/ia", "logits/iqa"},
            ("image", "text_eos", "words"),
        ),
    ],
)
def test_load_targets_reads_only_what_a_method_needs(cache, world, monkeypatch, needs, read, empty):
    """MD and AF read the image and text EOS targets, never the per-word arrays (issue 30.3):
    the arrays asked of the backend are those `needs` names, and their values are the full
    load's."""
    asked: set[str] = set()
    real = cache.backend.read_rows

    def spy(path, rows):
        asked.update(rows)
        return real(path, rows)

    ids = requested(world)
    full = open_cache(cache.path).load_targets(ids)  # its verified rows are kept: another cache
    monkeypatch.setattr(cache.backend, "read_rows", spy)
    part = cache.load_targets(ids, needs=needs)
    data = {name for name in asked if not is_tree(name)}
    # no ids are read: the index was checked against the manifest's ids when opened
    assert data == (read - {"example_id"}) & set(cache.shards[0]["arrays"])
    assert asked - data == {TREES}  # each checked by its row digests
    assert all(getattr(part, field) is None for field in empty)
    if "image" in needs:
        np.testing.assert_array_equal(part.image, full.image)
    if "text_eos" in needs:
        np.testing.assert_array_equal(part.text_eos, full.text_eos)
    if "logits" in needs:
        assert part.logits.keys() == full.logits.keys()


@pytest.mark.parametrize("selection", ["top", "random"])
def test_only_the_chosen_words_features_are_read(cache, world, monkeypatch, selection):
    """MAD's task stage (issue 30.3): with `choose_words`, word_feat is asked only for the words
    token selection keeps, and the selected targets equal those of a full load."""
    from madcache.method.methods import get_method
    from madcache.train.data import targets_to_tensors, word_chooser

    method = get_method("mad" if selection == "top" else "mad-random").only("task")
    ids = requested(world)
    full = targets_to_tensors(
        open_cache(cache.path).load_targets(ids, needs=method.needs),
        method,
        m=2,
        logits=None,
        seed=3,
    )
    asked: list[int] = []
    real = cache.backend.read_rows

    def spy(path, rows):
        asked.extend(len(r) for n, r in rows.items() if n == "word_feat")
        return real(path, rows)

    monkeypatch.setattr(cache.backend, "read_rows", spy)
    part = cache.load_targets(
        ids, needs=method.needs, choose_words=word_chooser(method, m=2, seed=3)
    )
    kept = targets_to_tensors(part, method, m=2, logits=None, seed=3)
    assert len(part.words.feat) == len(part.words.feat_rows) == int(full.word_mask.sum())
    # whole row blocks are read (each checked by its digest): at most a block per chosen word
    block = cache.shards[0]["arrays"]["word_feat"]["rows"]["block"]
    words = sum(e["words"] for e in cache.shards)
    assert 0 < sum(asked) <= block * int(full.word_mask.sum()) and sum(asked) < words
    for name in ("word_feat", "word_span", "word_mask", "image", "text_eos"):
        assert getattr(kept, name).equal(getattr(full, name)), name


def test_a_version_2_cache_is_read_and_verified_whole(
    tmp_path, world, fmt, cache_helpers, monkeypatch
):
    """A cache written before row digests (format version 2: the same values, no `rowtree/`
    arrays) loads the same targets, each needed array checked whole against its sha256 once per
    shard; a changed value is refused."""
    import madcache.cache.verified as verified
    import madcache.cache.writer as writer

    cache_helpers.write_world(tmp_path / "v3", world, fmt=fmt)
    monkeypatch.setattr(writer, "FORMAT_VERSION", 2)
    monkeypatch.setattr(writer, "with_trees", lambda arrays: (dict(arrays), {}))
    cache_helpers.write_world(tmp_path / "v2", world, fmt=fmt)
    old = open_cache(tmp_path / "v2")
    assert old.manifest["format_version"] == 2
    assert not any(is_tree(n) or "rows" in r for n, r in old.shards[0]["arrays"].items())
    whole: list[str] = []
    real = verified.array_problems
    monkeypatch.setattr(
        verified, "array_problems", lambda name, *a: whole.append(name) or real(name, *a)
    )
    ids = requested(world)
    got = old.load_targets(ids, needs=("image", "text_eos"))
    want = open_cache(tmp_path / "v3").load_targets(ids, needs=("image", "text_eos"))
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.text_eos, want.text_eos)
    shards = len({s for s, _ in (old._location_map()[i] for i in ids)})
    assert sorted(set(whole)) == ["example_image", "example_texts", "image_feat", "text_eos"]
    assert len(whole) == 4 * shards  # once per shard and array (ids: the index was checked)
    first = old.shards[0]
    arrays = old.backend.read(old.path / first["name"], ["image_feat"])
    old.backend.remove(old.path / first["name"])
    damaged = arrays["image_feat"].copy()
    damaged[0, 0] += 1
    full = {**writer.get_backend(fmt).read(tmp_path / "v3" / first["name"]), "image_feat": damaged}
    old.backend.write(old.path / first["name"], {n: a for n, a in full.items() if not is_tree(n)})
    with pytest.raises(
        CacheError,
        match="shard 0 does not hold what its extraction recorded: image_feat checksum mismatch",
    ):
        open_cache(tmp_path / "v2").load_targets([e.id for e in world.examples][:1])


def test_a_sparse_load_reads_no_array_metadata(tmp_path, world, fmt, cache_helpers, monkeypatch):
    """Row layouts come from the manifest (`rows.layout`: Zarr rows per chunk, HDF5 offsets):
    a verified sparse load reads no array's metadata (zarr.json, HDF5 object headers); a wrong
    layout is not trusted (its rows fail their digests), the shard's own metadata is read
    instead and the values are the same."""
    import madcache.cache.backends as backends

    cache_helpers.write_world(tmp_path / "c", world, fmt=fmt)
    ids = requested(world)
    want = open_cache(tmp_path / "c").load_targets(ids)
    opened: list[str] = []
    spied = "_zarr_layout" if fmt == "zarr" else "_h5_layout"
    real = getattr(backends, spied)
    monkeypatch.setattr(backends, spied, lambda path, name: opened.append(name) or real(path, name))
    cache = open_cache(tmp_path / "c")
    got = cache.load_targets(ids, needs=("image", "text_eos"))
    assert opened == []
    np.testing.assert_array_equal(got.text_eos, want.text_eos)
    wrong = open_cache(tmp_path / "c")
    for entry in wrong.shards:
        entry["arrays"]["image_feat"]["rows"]["layout"] = [1, 1]
    np.testing.assert_array_equal(wrong.load_targets(ids, needs=("image",)).image, want.image)
    assert opened


def test_the_check_ahead_leaves_word_features_to_the_read(cache, world, monkeypatch):
    """`VerifiedShards.ahead` reads the rows a load reads, but not `word_feat` (MAD reads only
    the words it chooses, known at the load): those rows are checked when the load reads them."""
    asked: list[set[str]] = []
    real = cache.backend.read_rows
    monkeypatch.setattr(
        cache.backend, "read_rows", lambda path, rows: asked.append(set(rows)) or real(path, rows)
    )
    ids = requested(world)
    names = {n for e in cache.shards for n in e["arrays"]} - {"rowtrees"}
    cache.verified.ahead(ids, names)
    ahead = set().union(*asked)
    assert "word_feat" not in ahead and {"image_feat", "text_eos", "word_score"} <= ahead
    asked.clear()
    targets = cache.load_targets(ids)
    assert {"word_feat"} == set().union(*asked) - {"rowtrees"}  # the rest was kept from ahead
    assert len(targets.words.feat) == int(targets.words.offsets[-1])
