"""A whole split kept on disk (data/stored.py): the examples it gives back are the reader's,
field for field (`raw` too), in the reader's and in image order; nothing is left on disk."""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import os

import pytest

from madcache.data import iter_examples, read_examples
from madcache.data.records import (
    Example,
    Text,
    Word,
    decode_example,
    encode_example,
    image_order,
)
from madcache.data.stored import ExampleWriter, StoredExamples, field_of

REAL_SPLITS = {
    "vcr-cs": ("vcr", "vcr", "annotations/vcr_cs_val_original.jsonl", {"skip_bad": True}),
    "vcr-val": ("vcr", "vcr", "extracted/val-1_from_iflytek_VLE_examples_VCR_README.jsonl", {}),
    "snli-ve": ("snli-ve", "snli_ve/allennlp_fixture", "sample_pairs.jsonl", {}),
    "vqa": (
        "vqa",
        "vqa_v2",
        "train",
        {
            "questions_file": "multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
            "annotations_file": "multimodal_testdata/v2_mscoco_train2014_annotations.json",
        },
    ),
}


def write_examples(examples, folder) -> StoredExamples:
    writer = ExampleWriter(folder)
    for example in examples:
        writer.add(example)
    return writer.finish()


def same(a: Example, b: Example) -> bool:
    """Every field equal and of the same type (`raw` too, which `==` leaves out)."""
    return all(
        getattr(a, f.name) == getattr(b, f.name)
        and type(getattr(a, f.name)) is type(getattr(b, f.name))
        for f in dataclasses.fields(Example)
    )


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(REAL_SPLITS))
def test_real_records_round_trip_field_for_field(real_root, name, tmp_path):
    dataset, folder, split, options = REAL_SPLITS[name]
    examples = read_examples(dataset, real_root / folder, split, **options).examples
    assert examples
    assert all(same(decode_example(encode_example(ex)), ex) for ex in examples)
    stored = write_examples(examples, tmp_path)
    assert len(stored) == len(examples)
    assert all(same(a, b) for a, b in zip(stored, examples))
    ordered = stored.in_image_order()
    assert [ex.id for ex in ordered] == [ex.id for ex in image_order(examples)]
    assert list(ordered.image_ids) == [ex.image_id for ex in image_order(examples)]
    assert list(ordered.ids) == list(field_of(image_order(examples), "id"))
    assert same(ordered[-1], image_order(examples)[-1])


def test_every_field_round_trips():
    """An example whose every field differs from its default: a field `encode_example` did not
    carry would come back as its default (or as a list for a tuple)."""
    text = Text("Is person1 here?", (Word("person1", 3, 10, (0, 2)), Word("?", 15, 16)))
    example = Example(
        id="a:qa",
        dataset="vcr",
        split="train",
        image_id="img \u00e9\U0001f600",
        image_path="x/y.jpg",
        choices=(Text.from_string("yes"), text),
        label=1,
        category="why",
        context=text,
        group="a",
        meta_path="x/y.json",
        answers=("yes", "no"),
        answer_scores={"yes": 0.3, "no": 1.0},
        label_free_text=Text.from_string("a b"),
        raw={"objects": ["person"], "n": [1, 2.5, None]},
    )
    defaults = Example("", "", "", "", "", (), None, "")
    assert all(
        getattr(example, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(Example)
    )
    assert same(decode_example(encode_example(example)), example)


def test_a_stored_split_is_a_sequence_and_leaves_no_file(demo_root, tmp_path):
    examples = list(iter_examples("vcr", demo_root / "vcr", "train"))
    stored = write_examples(iter_examples("vcr", demo_root / "vcr", "train"), tmp_path)
    assert os.listdir(tmp_path) == []  # unnamed: nothing to clean up after a crash
    assert len(stored) == len(examples) > 4
    assert same(stored[-1], examples[-1]) and same(stored[1], examples[1])
    assert [ex.id for ex in stored[2:5]] == [ex.id for ex in examples[2:5]]
    with pytest.raises(IndexError):
        stored[len(examples)]
    ordered = stored.in_image_order()
    assert [ex.id for ex in ordered] == [ex.id for ex in image_order(examples)]
    assert ordered.ids[3] == image_order(examples)[3].id


# run by the child process: what it decodes from the file it was given
CHILD = """import json, pathlib
pathlib.Path(out).write_text(json.dumps([[ex.id for ex in stored], list(stored.ids), stored[-1].raw]))
"""


@pytest.mark.parametrize("start", ["fork", "forkserver", "spawn"])
def test_a_process_started_from_this_one_reads_the_same_unnamed_file(demo_root, tmp_path, start):
    """A child process gets the open file, not a name (a DataLoader worker's way: inherited by
    fork, passed at a spawn or forkserver start), and decodes the same examples from it."""
    folder = tmp_path / "records"
    folder.mkdir()
    stored = write_examples(iter_examples("vcr", demo_root / "vcr", "train"), folder)
    ordered = stored.in_image_order()
    out = tmp_path / "child.json"
    names = {"stored": ordered, "out": str(out)}
    child = multiprocessing.get_context(start).Process(target=exec, args=(CHILD, names))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    ids = [ex.id for ex in ordered]
    assert json.loads(out.read_text()) == [ids, ids, ordered[-1].raw] and len(ids) > 4
    assert os.listdir(folder) == []
    assert copy.deepcopy(ordered).records is ordered.records  # read-only: copies share it
