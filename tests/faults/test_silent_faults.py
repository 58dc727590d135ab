"""Nothing silently wrong (issue 31): data that would make training "complete" on wrong numbers
is refused in one line, before any step uses it.

Non-finite numbers: a NaN in a cached target or a region feature is refused when the chunk is
read (`madcache.core.finite`); a step whose loss is not finite stops the run before it is
applied, and the run is not complete."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from madcache.core.errors import NonFiniteLossError
from madcache.train.loop import train


def _poison(store_dir, array: str, *, recorded: bool, value: float = np.nan) -> None:
    """Write `value` into the first row of `array` in the first shard of a cache or region
    store; `recorded`: also record the new values' sha256 in the manifest and the commit record
    (as an extraction that computed NaN would have), else the stored values no longer match."""
    from madcache.cache.manifest import array_record

    path = store_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = sorted(manifest["shards"], key=lambda e: e["index"])[0]
    stored = zarr.open_group(str(store_dir / entry["name"]), mode="r+")[array]
    row = np.array(stored[:1])
    row[...] = value
    stored[:1] = row
    if recorded:
        entry["arrays"][array] = array_record(np.array(stored[...]))
        path.write_text(json.dumps(manifest))
        commit = store_dir / "commits" / f"{entry['index']:05d}.json"
        record = json.loads(commit.read_text())
        record["arrays"][array] = entry["arrays"][array]
        commit.write_text(json.dumps(record))


def _damaged(tmp_path, train_world, store: str):
    damaged = tmp_path / store
    shutil.copytree(getattr(train_world, store), damaged)
    return damaged, type(train_world)(**{**vars(train_world), store: damaged})


@pytest.mark.parametrize(
    "store, array, named",
    [("cache", "image_feat", "image"), ("regions", "region_feat", "region_feat")],
)
def test_nan_in_a_cache_or_region_store_is_refused_in_one_line(
    tmp_path, train_world, faults, store, array, named
):
    """NaN the extraction itself wrote (its checksums match): refused when read."""
    damaged, world = _damaged(tmp_path, train_world, store)
    _poison(damaged, array, recorded=True)
    out = tmp_path / "run"
    line = faults.one_line_error(faults.invoke(*faults.train_args(world, out)))
    assert "NaN or infinite" in line and str(damaged) in line
    assert f"{named} holds" in line and "verify" in line
    assert not (out / "metrics.json").exists()  # nothing reports the run complete


@pytest.mark.parametrize(
    "store, array",
    [("cache", "image_feat"), ("cache", "example_texts"), ("regions", "region_boxes")],
)
def test_a_value_changed_after_extraction_is_refused_before_training(
    tmp_path, train_world, faults, store, array
):
    """Verified reads (issue 31.1): a stored value changed since extraction (here a finite one,
    which no NaN check sees) is refused before the first step, by its shard's checksum."""
    damaged, world = _damaged(tmp_path, train_world, store)
    _poison(damaged, array, recorded=False, value=0.5 if array != "example_texts" else 1)
    out = tmp_path / "run"
    line = faults.one_line_error(faults.invoke(*faults.train_args(world, out)))
    assert (
        f"{damaged}: shard 0 does not hold what its extraction recorded: {array} checksum mismatch"
        in line
        and "cache verify" in line
    )
    assert not out.exists()  # refused before anything was recorded


def test_eval_images_missing_from_the_region_store_are_refused_before_training(
    tmp_path, train_world, faults
):
    """The region store must hold the eval split's images too: refused before the first step
    (it was refused at the first validation, after training), and nothing is written."""
    root = tmp_path / "snli"
    shutil.copytree(train_world.root, root)
    shutil.copy(root / "images" / "1000.jpg", root / "images" / "2000.jpg")
    (root / "snli_ve_dev.jsonl").write_text(
        json.dumps(
            {
                "Flickr30K_ID": "2000",
                "gold_label": "neutral",
                "pairID": "2000.jpg#0r1n",
                "sentence2": "a hypothesis",
            }
        )
        + "\n"
    )
    world = type(train_world)(**{**vars(train_world), "root": root})
    out = tmp_path / "run"
    line = faults.one_line_error(
        faults.invoke(*faults.train_args(world, out), "--eval-split", "dev")
    )
    assert "1 image(s) are not in the region store" in line and "'2000'" in line
    assert not out.exists()


def test_a_run_records_the_shards_it_verified(tmp_path, train_world, faults):
    """inputs.json names every shard the run read, with the digest of the sha256s it checked;
    each shard is read for verification once per process."""
    from madcache.cache.reader import open_cache
    from madcache.cache.verified import _digest

    out = tmp_path / "run"
    assert faults.invoke(*faults.train_args(train_world, out)).exit_code == 0
    reads = json.loads((out / "inputs.json").read_text())["verified_reads"]
    for key, path, names in (
        (
            "cache",
            train_world.cache,
            ("example_id", "example_image", "example_texts", "image_feat", "text_eos"),
        ),
        (
            "regions",
            train_world.regions,
            ("example_id", "region_boxes", "region_feat", "region_offsets"),
        ),
    ):
        shards = open_cache(path).shards
        assert reads[key] == {
            e["name"]: _digest({n: e["arrays"][n]["sha256"] for n in names}) for e in shards
        }


def test_a_non_finite_loss_stops_the_run_before_the_step_is_applied(tmp_path, standins):
    setup = standins.make_setup(tmp_path, method="md", lr=1e30, weight_decay=0.0, epochs=20)
    with pytest.raises(NonFiniteLossError, match="the loss is not finite") as raised:
        train(setup)
    assert "task step" in str(raised.value) and "lower the learning rate" in str(raised.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


# ----------------------------------------------------------------------------- options and files


@pytest.mark.parametrize(
    "flag, value, named",
    [("--yake-language", "xx", "stop-word list"), ("--default-logits", "nosuch", "writes")],
)
def test_an_extraction_option_with_no_meaning_is_refused(
    tmp_path, snli_root, tiny_clip, faults, flag, value, named
):
    out = tmp_path / "cache"
    line = faults.one_line_error(
        faults.invoke(*faults.extract_args(snli_root, out, tiny_clip, flag, value))
    )
    assert flag in line and named in line and not out.exists()


def test_a_key_above_the_train_table_is_refused(tmp_path):
    from madcache.core.errors import ConfigError
    from madcache.train.config import TrainConfig

    path = tmp_path / "run.toml"
    path.write_text('lr = 1.0\n[train]\ndataset = "vcr"\nroot = "r"\nout = "o"\n')
    with pytest.raises(ConfigError, match="lr stand"):
        TrainConfig.from_toml(path)


def test_a_split_file_with_ids_the_split_lacks_is_refused(tmp_path, train_world, faults):
    from madcache.data import read_examples
    from madcache.data.lowshot import Split

    known = [ex.id for ex in read_examples("snli-ve", train_world.root, "train").examples[:2]]
    path = Split(
        dataset="snli-ve",
        source_split="train",
        params={"k": 1, "seed": 0},
        ids=[*known, "nosuch.jpg#0r1e"],
        counts={"entailment": 3},
        example_counts={"entailment": 3},
    ).save(tmp_path / "split.json")
    out = tmp_path / "run"
    line = faults.one_line_error(
        faults.invoke(*faults.train_args(train_world, out, "--split-file", path))
    )
    assert "1 of its 3 ids are not in the snli-ve train split" in line and "nosuch" in line
    assert not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------- nothing clobbered


def test_lowshot_never_replaces_a_file_it_did_not_write(tmp_path, train_world, faults):
    precious = tmp_path / "weights.safetensors"
    precious.write_bytes(b"\x00user data" * 100)
    args = [
        "data",
        "lowshot",
        "--dataset",
        "snli-ve",
        "--root",
        train_world.root,
        "--split",
        "train",
        "--per-category",
        "1",
        "--seed",
        "0",
    ]
    line = faults.one_line_error(faults.invoke(*args, "--out", precious))
    assert str(precious) in line and "not a low-shot split" in line
    assert precious.read_bytes() == b"\x00user data" * 100
    split = tmp_path / "split.json"
    assert faults.invoke(*args, "--out", split).exit_code == 0
    assert faults.invoke(*args, "--seed", "1", "--out", split).exit_code == 0  # a rerun: ours


def test_report_never_replaces_a_report_md_it_did_not_write(tmp_path, faults):
    (tmp_path / "runs").mkdir()
    mine = tmp_path / "notes" / "report.md"
    mine.parent.mkdir()
    mine.write_text("my own notes\n")
    line = faults.one_line_error(faults.invoke("report", tmp_path / "runs", "--out", mine.parent))
    assert "report.md already exists" in line and mine.read_text() == "my own notes\n"


def test_demo_teacher_never_replaces_another_checkpoint(tmp_path, demo_root, faults):
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"not the demo teacher")
    line = faults.one_line_error(
        faults.invoke(
            "demo", "teacher", "--data", demo_root, "--out", other, "--steps", "1", "--no-progress"
        )
    )
    assert "not a demo teacher checkpoint" in line and other.read_bytes() == b"not the demo teacher"


def test_resume_of_a_finished_run_changes_nothing(tmp_path, train_world, faults):
    out = tmp_path / "run"
    assert faults.invoke(*faults.train_args(train_world, out)).exit_code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["eval"]["val_sm"] = {"q2a": 12.5}  # what `madcache eval --sm` adds
    (out / "metrics.json").write_text(json.dumps(metrics))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = faults.invoke(*faults.train_args(train_world, out, "--resume"))
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_second_writer_of_a_run_is_refused(tmp_path, train_world, faults):
    """One writer per run (issue 31.7): while a process holds the run folder, another training
    into it is refused in one line and writes nothing."""
    from madcache.train.rundir import one_writer

    out = tmp_path / "run"
    with one_writer(out):
        line = faults.one_line_error(
            faults.invoke(*faults.train_args(train_world, out, "--overwrite"))
        )
        assert "being written by another madcache process" in line
        assert not any(out.iterdir())
    assert faults.invoke(*faults.train_args(train_world, out)).exit_code == 0


def test_a_refused_run_leaves_no_folder_behind(tmp_path, train_world, faults):
    out = tmp_path / "run"
    line = faults.one_line_error(
        faults.invoke(
            *faults.train_args(
                train_world, out, "--per-category", "1", "--regions", tmp_path / "no-such-store"
            )
        )
    )
    assert "no-such-store" in line and not out.exists()  # no split.json left behind


# ----------------------------------------------------------------------------- one extraction


def _spliced(tmp_path, train_world):
    """A copy of the cache whose shard 0 and its commit record (and index part) come from
    another teacher's extraction of the same split, with the same layout."""
    cache = tmp_path / "cache"
    shutil.copytree(train_world.cache, cache)
    other = train_world.other_cache
    shutil.rmtree(cache / "shard-00000.zarr")
    shutil.copytree(other / "shard-00000.zarr", cache / "shard-00000.zarr")
    for part in (
        "commits/00000.json",
        *(p.relative_to(other).as_posix() for p in (other / "index-parts").glob("00000*")),
    ):
        shutil.copy(other / part, cache / part)
    return cache


def test_a_shard_of_another_extraction_cannot_be_finished_into_a_cache(
    tmp_path, train_world, faults
):
    cache = _spliced(tmp_path, train_world)
    line = faults.one_line_error(faults.invoke("cache", "finish", cache))
    assert "shard(s) 0 were written by another extraction" in line


def test_a_spliced_shard_with_its_record_fails_verify(tmp_path, train_world, faults):
    cache = _spliced(tmp_path, train_world)
    result = faults.invoke("cache", "verify", cache)
    assert (
        result.exit_code != 0 and "shard(s) 0 were written by another extraction" in result.output
    )


def test_an_edited_teacher_name_fails_verify_and_training(tmp_path, train_world, faults):
    cache = tmp_path / "cache"
    shutil.copytree(train_world.cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["teachers"] = {k: "openclip:ViT-L-14" for k in manifest["teachers"]}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert "another extraction" in faults.invoke("cache", "verify", cache).output
    world = type(train_world)(**{**vars(train_world), "cache": cache})
    out = tmp_path / "run"
    line = faults.one_line_error(faults.invoke(*faults.train_args(world, out)))
    assert "another extraction" in line and not (out / "metrics.json").exists()


@pytest.mark.slow
def test_the_order_of_the_index_rows_changes_no_result(tmp_path, train_world, faults):
    """Training reads a split in the dataset's image order, never in the index's row order
    (issue 31.4: reordered rows changed AF's loss and the weights)."""
    import pyarrow.parquet as pq

    cache = tmp_path / "cache"
    shutil.copytree(train_world.cache, cache)
    table = pq.read_table(cache / "index.parquet")
    pq.write_table(table.take(np.arange(table.num_rows)[::-1]), cache / "index.parquet")
    runs = []
    for name, source in (("as-built", train_world.cache), ("reordered", cache)):
        world = type(train_world)(**{**vars(train_world), "cache": source})
        out = tmp_path / name
        result = faults.invoke(*faults.train_args(world, out, "--af-max-steps", "2", method="mad"))
        assert result.exit_code == 0, result.output
        runs.append(out)
    a, b = (json.loads((out / "metrics.json").read_text()) for out in runs)
    assert a["history"] == b["history"] and a["eval"] == b["eval"]


@pytest.mark.parametrize("store, array", [("cache", "image_feat"), ("regions", "region_feat")])
def test_a_lost_zarr_chunk_is_refused_not_read_as_zeros(
    tmp_path, train_world, faults, store, array
):
    damaged, world = _damaged(tmp_path, train_world, store)
    chunk = next(
        p for p in sorted((damaged / "shard-00000.zarr" / array / "c").rglob("*")) if p.is_file()
    )
    chunk.unlink()
    out = tmp_path / "run"
    line = faults.one_line_error(faults.invoke(*faults.train_args(world, out)))
    assert (
        f"shard 0 does not hold what its extraction recorded: it has lost stored chunks of "
        f"{array} (1)"
        in line
        and "verify" in line
    )
    assert not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------- records


def test_a_json_key_given_twice_is_a_bad_record(tmp_path):
    from madcache.core.errors import DataError
    from madcache.data import read_examples

    path = tmp_path / "snli_ve_train.jsonl"
    path.write_text(
        '{"pairID": "1.jpg#0r1e", "Flickr30K_ID": "1", "sentence2": "a", '
        '"gold_label": "entailment", "gold_label": "contradiction"}\n'
    )
    with pytest.raises(DataError, match="'gold_label' appears twice") as raised:
        read_examples("snli-ve", tmp_path, "train")
    assert (raised.value.line, raised.value.field) == (1, "gold_label")


def test_snli_ve_image_keys_that_disagree_are_a_bad_record(tmp_path):
    from madcache.data import read_examples

    (tmp_path / "snli_ve_train.jsonl").write_text(
        '{"pairID": "1.jpg#0r1e", "Flickr30K_ID": "1", "Flikr30kID": "2.jpg", '
        '"sentence2": "a", "gold_label": "entailment"}\n'
        '{"pairID": "3.jpg#0r1e", "Flickr30K_ID": 3, "Flikr30kID": "3.jpg", '
        '"sentence2": "a", "gold_label": "entailment"}\n'
    )
    result = read_examples("snli-ve", tmp_path, "train", skip_bad=True)
    assert [ex.image_id for ex in result.examples] == ["3"]
    assert "name different images (1, 2)" in result.skipped[0].reason


def _demo_vcr_lines(demo_root, tmp_path, change):
    """A copy of the demo VCR train split (annotations only) whose second record `change`d."""
    root = tmp_path / "vcr"
    root.mkdir()
    lines = (demo_root / "vcr" / "train.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    change(record)
    lines[1] = json.dumps(record)
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    "change, message, field",
    [
        (
            lambda r: r.pop("rationale_label"),
            "has answer_label but no rationale_label",
            "rationale_label",
        ),
        (lambda r: r.update(annot_id=r["annot_id"] + "\x00"), "holds a NUL character", None),
        (lambda r: r["answer_choices"][0].append("a\x00b"), "holds a NUL character", None),
    ],
)
def test_a_record_training_would_refuse_is_refused_by_every_reader(
    demo_root, tmp_path, faults, change, message, field
):
    """One reader for every command: `data stats` and `data lowshot` counted a VCR record
    without a rationale label (or with a NUL in its id) that training refused; now each names
    the file and line."""
    from madcache.core.errors import DataError
    from madcache.data import read_examples

    root = _demo_vcr_lines(demo_root, tmp_path, change)
    with pytest.raises(DataError, match=message) as raised:
        read_examples("vcr", root, "train")
    assert (raised.value.line, raised.value.field) == (2, field)
    for args in (
        ["stats"],
        ["lowshot", "--per-category", "1", "--seed", "0", "--out", tmp_path / "s.json"],
    ):
        line = faults.one_line_error(
            faults.invoke("data", *args, "--dataset", "vcr", "--root", root, "--split", "train")
        )
        assert message in line and "train.jsonl:2" in line
    assert len(read_examples("vcr", root, "train", skip_bad=True).skipped) == 1


def test_a_vqa_annotation_without_ten_answers_is_a_bad_record(demo_root, tmp_path):
    from madcache.core.errors import DataError
    from madcache.data import read_examples

    root = tmp_path / "vqa"
    shutil.copytree(demo_root / "vqa", root, ignore=shutil.ignore_patterns("*.jpg"))
    path = root / "v2_mscoco_train2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["answers"] = data["annotations"][0]["answers"][:9]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="9 answers; VQA v2 annotations hold 10"):
        read_examples("vqa", root, "train")


# ----------------------------------------------------------------------------- the README's path


def test_a_split_file_run_records_its_shots_and_refuses_another_seed(tmp_path, train_world, faults):
    """README step 3 (issue 32.1): a --split-file run carries the split's shot count (the
    report labelled it "full"), and a --seed other than the split's is refused in one line."""
    split = tmp_path / "split.json"
    args = [
        "data",
        "lowshot",
        "--dataset",
        "snli-ve",
        "--root",
        train_world.root,
        "--split",
        "train",
        "--per-category",
        "2",
        "--seed",
        "0",
        "--out",
        split,
    ]
    assert faults.invoke(*args).exit_code == 0
    refused = tmp_path / "refused"
    line = faults.one_line_error(
        faults.invoke(
            *faults.train_args(train_world, refused, "--split-file", split, "--seed", "3")
        )
    )
    assert "drawn with seed 0 but the run has --seed 3" in line and not refused.exists()
    out = tmp_path / "run"
    assert faults.invoke(*faults.train_args(train_world, out, "--split-file", split)).exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["shots"] == 2


def test_a_missing_region_store_names_the_command_that_builds_one(tmp_path, train_world, faults):
    line = faults.one_line_error(
        faults.invoke(
            *faults.train_args(train_world, tmp_path / "run", "--regions", tmp_path / "nowhere")
        )
    )
    assert "no region store at" in line and "madcache regions" in line
    assert "madcache extract" not in line


def test_weights_of_another_architecture_are_not_called_corrupt(tmp_path):
    from madcache.core.errors import CheckpointCorruptError
    from madcache.core.io import loading

    with pytest.raises(CheckpointCorruptError) as raised:
        with loading(tmp_path / "teacher.pt", what="teacher weights"):
            raise RuntimeError(
                "Error(s) in loading state_dict for CLIP: size mismatch for positional_embedding"
            )
    assert "another architecture" in str(raised.value) and "corrupt" not in str(raised.value)
