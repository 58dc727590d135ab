import copy
import json

import numpy as np
import pytest

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError, UnsafePathError
from madcache.data import DATASETS, read_examples
from madcache.data.vcr import load_vcr_metadata, render_tokens

VCR_CS = "annotations/vcr_cs_val_original.jsonl"
VAL1 = "extracted/val-1_from_iflytek_VLE_examples_VCR_README.jsonl"
RELABELLED = {
    "val-37",
    "val-121",
    "val-227",
    "val-334",
    "val-337",
    "val-464",
    "val-919",
    "val-982",
    "val-1479",
    "val-5068",
    "val-6110",
    "val-7552",
    "val-7558",
    "val-7709",
    "val-8106",
    "val-8765",
    "val-8850",
    "val-8941",
    "val-9039",
    "val-9098",
    "val-9497",
    "val-9520",
    "val-9521",
    "val-9630",
}

BASE = {
    "movie": "m",
    "objects": ["person", "person", "person", "car"],
    "img_fn": "m/a.jpg",
    "metadata_fn": "m/a.json",
    "question": ["Why", "is", [0], "near", [3], "?"],
    "answer_choices": [
        [[0], "waits", "."],
        [[1], "drives", "."],
        ["It", "rains", "."],
        [[0, 2], "talk", "."],
    ],
    "rationale_choices": [["a", "."], ["b", "."], ["c", "."], ["d", "."]],
    "answer_label": 1,
    "rationale_label": 3,
    "img_id": "val-0",
    "annot_id": "val-1",
}


def record(**changes) -> dict:
    return {**copy.deepcopy(BASE), **changes}


def write(tmp_path, *records, name="val.jsonl"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


# ----------------------------------------------------------------------------- real files


@pytest.mark.real
def test_vcr_cs_duplicates_stop_a_strict_read_with_file_line_and_field(real_root):
    with pytest.raises(DataError) as err:
        read_examples("vcr", real_root / "vcr", VCR_CS)
    assert err.value.line == 98 and err.value.field == "annot_id"
    assert "vcr_cs_val_original.jsonl:98" in str(err.value) and "identical copy of line 97" in str(
        err.value
    )


@pytest.mark.real
def test_vcr_cs_reads_152_questions_and_reports_the_7_duplicates(real_root):
    result = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True)
    assert len(result.examples) == 304
    assert [bad.line for bad in result.skipped] == [98, 100, 102, 140, 144, 146, 159]
    assert "conflicting copy of line 154" in result.skipped[-1].reason
    skipped = []  # the streaming form: the same examples and reports, one record at a time
    assert (
        list(
            DATASETS.get("vcr").iter_examples(
                real_root / "vcr", VCR_CS, skip_bad=True, skipped=skipped
            )
        )
        == result.examples
    )
    assert skipped == result.skipped
    qa = {ex.group: ex for ex in result.examples if ex.id.endswith(":qa")}
    assert len(qa) == 152 and len({ex.image_id for ex in qa.values()}) == 143


@pytest.mark.real
def test_the_24_relabelled_records_are_read_as_they_are(real_root):
    result = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True)
    qa = [ex for ex in result.examples if ex.id.endswith(":qa")]
    relabelled = {
        ex.group for ex in qa if ex.raw["answer_sources"][ex.label] != ex.raw["match_index"]
    }
    assert relabelled == RELABELLED
    assert all(ex.label == ex.raw["answer_label"] for ex in qa)
    assert next(ex for ex in qa if ex.group == "val-9497").label == 1  # line 154, not the gold 2


@pytest.mark.real
def test_rendered_text_has_spans_and_boxes(real_root):
    result = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True)
    ex = next(ex for ex in result.examples if ex.id == "val-35:qa")
    assert ex.group == "val-35" and ex.label == 3 and ex.category == "mental"
    text = ex.texts[3]
    assert (
        text.text == "What is person1 thinking ? person1 is wondering if person2 is going "
        "to kiss her ."
    )
    refs = [(w.text, w.start, w.end, w.boxes) for w in text.words if w.boxes]
    assert refs == [("person1", 8, 15, (0,)), ("person1", 27, 34, (0,)), ("person2", 51, 58, (1,))]
    assert len(text.words) == 5 + 11
    assert ex.image_path == (
        "vcr1images/lsmdc_3036_IN_TIME/3036_IN_TIME_00.37.33.594-00.37.54.485@0.jpg"
    )
    assert ex.meta_path.endswith("@0.json") and ex.image_id == "val-12"


@pytest.mark.real
def test_unsorted_reference_of_four_keeps_the_given_order(real_root):
    result = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True)
    ex = next(
        ex for ex in result.examples if ex.context.text.startswith("What is the relationship")
    )
    assert ex.raw["question"][-2] == [2, 3, 0, 1]
    assert ex.context.text == (
        "What is the relationship between person3, person4, person1 and person2 ?"
    )
    words = [(w.text, w.start, w.boxes) for w in ex.context.words[5:]]
    assert words == [
        ("person3", 33, (2,)),
        (",", 40, ()),
        ("person4", 42, (3,)),
        (",", 49, ()),
        ("person1", 51, (0,)),
        ("and", 59, ()),
        ("person2", 63, (1,)),
        ("?", 71, ()),
    ]


@pytest.mark.real
def test_val1_chain_annotation_image_metadata(real_root):
    result = read_examples("vcr", real_root / "vcr", VAL1, check_files=True)
    qa, qar = result.examples
    assert (qa.id, qa.label, qar.id, qar.label) == ("val-1:qa", 2, "val-1:qar", 3)
    assert qa.context.text == "Does person1 live in this house ?"
    assert qar.context.text == "Does person1 live in this house ? No , person1 is a visitor ."
    assert qar.choices[3].text.startswith("person1 is wearing outerwear ,")
    assert (real_root / "vcr" / qa.image_path).is_file()
    meta = load_vcr_metadata(real_root / "vcr", qa)
    assert meta.boxes.shape == (6, 5) and meta.boxes.dtype == np.float32
    assert meta.boxes[0, 0] == pytest.approx(955.7418, abs=1e-3)
    assert meta.names == ["person", "person", "person", "car", "cellphone", "clock"]
    assert (meta.width, meta.height, len(meta.segms)) == (1920, 797, 6)


@pytest.mark.real
def test_renderers_on_val1(real_root):
    by_name = read_examples("vcr", real_root / "vcr", VAL1, renderer="name").examples[0]
    by_class = read_examples("vcr", real_root / "vcr", VAL1, renderer="class").examples[0]
    assert by_name.context.text == "Does Casey live in this house ?"
    assert by_name.choices[3].text == "No Riley does not belong here ."
    assert by_class.context.text == "Does person live in this house ?"
    assert by_name.context.words[1].boxes == (0,)


@pytest.mark.real
def test_missing_images_are_reported_with_check_files(real_root):
    with pytest.raises(DataFileNotFoundError) as err:
        read_examples("vcr", real_root / "vcr", VCR_CS, check_files=True)
    assert (err.value.line, err.value.field, err.value.record_id) == (1, "img_fn", "val-35")


@pytest.mark.real
def test_gd_vcr_variant_reads_with_its_one_bad_record_reported(real_root):
    root = real_root / "vcr_variants" / "gd_vcr"
    with pytest.raises(DataError, match="token 3 is an empty string"):
        read_examples("vcr", root, "val.jsonl")
    result = read_examples("vcr", root, "val.jsonl", skip_bad=True)
    assert len(result.examples) == 2 * 885
    [bad] = result.skipped
    assert (bad.line, bad.field, bad.record_id) == (862, "question", "val-861")


# ----------------------------------------------------------------------------- behaviour


def test_render_tokens_joins_several_references():
    text = render_tokens(["Ask", [1, 0, 3], "."], ["person", "person", "dog", "car"])
    assert text.text == "Ask person2, person1 and car4 ."
    assert [(w.text, w.start, w.end, w.boxes) for w in text.words] == [
        ("Ask", 0, 3, ()),
        ("person2", 4, 11, (1,)),
        (",", 11, 12, ()),
        ("person1", 13, 20, (0,)),
        ("and", 21, 24, ()),
        ("car4", 25, 29, (3,)),
        (".", 30, 31, ()),
    ]


def test_modes_test_split_and_annotations_option(tmp_path):
    unlabelled = record(annot_id="test-1")
    del unlabelled["answer_label"], unlabelled["rationale_label"]
    write(tmp_path, record(), unlabelled, name="test.jsonl")
    examples = read_examples("vcr", tmp_path, "test").examples
    assert [(ex.id, ex.label) for ex in examples] == [
        ("val-1:qa", 1),
        ("val-1:qar", 3),
        ("test-1:qa", None),
    ]
    assert examples[1].context.text == "Why is person1 near car4 ? person2 drives ."
    assert examples[0].category == "explanation"
    elsewhere = write(tmp_path / "x", record(annot_id="z", extra_key=1), name="mine.jsonl")
    only_qa = read_examples("vcr", tmp_path, "val", annotations=str(elsewhere), modes="qa")
    assert [ex.id for ex in only_qa.examples] == ["z:qa"]
    assert DATASETS.get("vcr").annotation_files(tmp_path, "val") == [tmp_path / "val.jsonl"]


@pytest.mark.parametrize(
    "changes, field, message",
    [
        (
            {"answer_choices": BASE["answer_choices"][:2] + [["x", [4]], ["y"]]},
            "answer_choices[2]",
            "object index 4 is out of range",
        ),
        ({"answer_label": 4}, "answer_label", "0..3"),
        ({"rationale_choices": [["a"]] * 3}, "rationale_choices", "expected 4 choices, got 3"),
        ({"question": []}, "question", "empty text"),
        ({"answer_choices": [["a"], [], ["c"], ["d"]]}, "answer_choices[1]", "empty text"),
        ({"annot_id": 7}, "annot_id", "non-empty string"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, changes, field, message):
    path = write(tmp_path, record(annot_id="ok"), record(**changes))
    with pytest.raises(DataError) as err:
        read_examples("vcr", tmp_path, "val")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 2, field)
    assert message in str(err.value) and "val.jsonl:2" in str(err.value)


def test_missing_key_malformed_line_and_duplicates(tmp_path):
    missing = record()
    del missing["objects"]
    write(tmp_path, record(), "{not json", missing, record(), record(annot_id="val-2"))
    with pytest.raises(DataError, match="malformed JSON"):
        read_examples("vcr", tmp_path, "val")
    result = read_examples("vcr", tmp_path, "val", skip_bad=True)
    assert [ex.id for ex in result.examples] == ["val-1:qa", "val-1:qar", "val-2:qa", "val-2:qar"]
    assert [(b.line, b.field) for b in result.skipped] == [
        (2, None),
        (3, "objects"),
        (4, "annot_id"),
    ]


def test_image_path_escaping_the_root_is_refused(tmp_path):
    write(tmp_path, record(img_fn="../../etc/passwd"))
    with pytest.raises(UnsafePathError) as err:
        read_examples("vcr", tmp_path, "val")
    assert (err.value.line, err.value.field) == (1, "img_fn")
    with pytest.raises(UnsafePathError):
        read_examples("vcr", tmp_path, "../val.jsonl")


def test_check_files_finds_images_and_options_are_checked(tmp_path):
    write(tmp_path, record())
    for name in ("a.jpg", "a.json"):
        (tmp_path / "imgs" / "m").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / "m" / name).write_bytes(b"x")
    examples = read_examples("vcr", tmp_path, "val", images_dir="imgs", check_files="true")
    assert examples.examples[0].image_path == "imgs/m/a.jpg"
    with pytest.raises(DataFileNotFoundError, match="metadata_fn|img_fn"):
        read_examples("vcr", tmp_path, "val", check_files=True)
    with pytest.raises(ConfigError, match="Valid options: annotations, check_files"):
        read_examples("vcr", tmp_path, "val", colour="red")
    with pytest.raises(ConfigError, match="renderer"):
        read_examples("vcr", tmp_path, "val", renderer="emoji")
    with pytest.raises(ConfigError, match="unknown split"):
        read_examples("vcr", tmp_path, "dev")
    with pytest.raises(DataFileNotFoundError):
        read_examples("vcr", tmp_path, "train")


def test_readers_are_registered_datasets():
    from madcache.data import Dataset

    for name in ("vcr", "snli-ve", "vqa"):
        assert isinstance(DATASETS.get(name), Dataset) and DATASETS.get(name).name == name


def test_label_free_text_and_answer_conditioned_rationales(demo_root):
    from madcache.data.vcr import conditioned_rationale_examples

    examples = read_examples("vcr", demo_root / "vcr", "val", renderer="name").examples
    qa = next(ex for ex in examples if ex.id.endswith(":qa"))
    qar = next(ex for ex in examples if ex.id == f"{qa.group}:qar")
    objects = ", ".join(qa.raw["objects"])
    # the question and the image's objects, without any answer (an image-specific ITM text)
    assert qa.label_free_text.text == f"{qa.context.text} objects: {objects}."
    assert qar.label_free_text == qa.label_free_text
    conditioned = conditioned_rationale_examples(qa, renderer="name")
    assert [ex.id for ex in conditioned] == [f"{qa.group}:qar|a{i}" for i in range(4)]
    assert [ex.context.text for ex in conditioned] == [
        f"{qa.context.text} {answer.text}" for answer in qa.choices
    ]
    assert conditioned[qa.label].texts == qar.texts  # the right answer's row is the :qar example
    assert all(ex.label is None and ex.choices == qar.choices for ex in conditioned)


def test_one_image_id_names_one_image_file(tmp_path):
    """Caches and region stores key images by id: a record whose img_id names another file
    would get that file's features (issue 31.2), so it is a bad record."""
    write(
        tmp_path,
        record(),
        record(annot_id="val-2", img_fn="m/b.jpg"),
        record(annot_id="val-3", img_id="val-9", img_fn="m/b.jpg"),
    )
    with pytest.raises(
        DataError,
        match="img_id 'val-0' names vcr1images/m/b.jpg here but vcr1images/m/a.jpg on line 1",
    ) as err:
        read_examples("vcr", tmp_path, "val")
    assert (err.value.line, err.value.field) == (2, "img_id")
    result = read_examples("vcr", tmp_path, "val", skip_bad=True)
    assert sorted({ex.group for ex in result.examples}) == ["val-1", "val-3"]


@pytest.mark.parametrize(
    "box, message", [([10, 5, 2, 9, 0.9], "inverted"), ([0, 0, float("inf"), 9, 0.9], "non-finite")]
)
def test_inverted_or_infinite_metadata_boxes_are_refused(tmp_path, box, message):
    write(tmp_path, record())
    meta = {
        "boxes": [[0, 0, 5, 5, 0.9], box, [1, 1, 3, 3, 0.8], [2, 2, 4, 4, 0.7]],
        "names": BASE["objects"],
        "width": 20,
        "height": 20,
        "segms": [[]] * 4,
    }
    (tmp_path / "vcr1images" / "m").mkdir(parents=True)
    (tmp_path / "vcr1images" / "m" / "a.json").write_text(
        json.dumps(meta).replace("Infinity", "1e999")
    )
    example = read_examples("vcr", tmp_path, "val").examples[0]
    with pytest.raises(DataError, match=message) as err:
        load_vcr_metadata(tmp_path, example)
    assert err.value.field == "boxes" and "a.json" in str(err.value) and "box 1" in str(err.value)
