import json
from collections import Counter

import pytest

from madcache.core.errors import DataError, DataFileNotFoundError, UnsafePathError
from madcache.data import DATASETS, read_examples
from madcache.data.snli_ve import LABELS, default_images_dir

PAIR = {
    "Flickr30K_ID": "42",
    "gold_label": "neutral",
    "pairID": "42.jpg#0r1n",
    "sentence1": "A caption.",
    "sentence2": "A dog runs.",
}


def write(root, *records, name="snli_ve_dev.jsonl"):
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


@pytest.mark.real
def test_current_format_sample(real_root):
    root = real_root / "snli_ve" / "allennlp_fixture"
    examples = read_examples("snli-ve", root, "sample_pairs.jsonl", check_files=True).examples
    assert len(examples) == 16
    assert Counter(ex.category for ex in examples) == {
        "entailment": 6,
        "neutral": 6,
        "contradiction": 4,
    }
    first = examples[0]
    assert (first.id, first.label, first.category) == ("2248275918.jpg#2r1c", 2, "contradiction")
    assert first.choices[0].text == "A toddler sleeps outside." and first.context is None
    assert [w.text for w in first.texts[0].words] == ["A", "toddler", "sleeps", "outside", "."]
    assert (first.image_id, first.image_path) == ("2248275918", "images/2248275918.jpg")
    assert Counter(ex.image_id for ex in examples) == {"2248275918": 15, "402978771": 1}


@pytest.mark.real
def test_old_format_with_misspelt_key_and_jpg_suffix(real_root):
    root = real_root / "snli_ve" / "cpuknows_sample"
    examples = read_examples("snli-ve", root, "sample_data.jsonl", check_files=True).examples
    assert len(examples) == 5
    assert (examples[0].image_id, examples[0].image_path) == ("555378351", "555378351.jpg")
    assert examples[0].choices[0].text == "A man walking with his son's bike."
    assert Counter(ex.category for ex in examples) == {"entailment": 4, "neutral": 1}


def test_split_names_images_dir_and_labels(tmp_path):
    write(tmp_path, PAIR, {**PAIR, "pairID": "42.jpg#0r1e", "gold_label": "entailment"})
    (tmp_path / "Flickr30K" / "flickr30k_images").mkdir(parents=True)
    assert default_images_dir(tmp_path) == "Flickr30K/flickr30k_images"
    examples = read_examples("snli-ve", tmp_path, "dev").examples
    assert [(ex.id, ex.label) for ex in examples] == [("42.jpg#0r1n", 1), ("42.jpg#0r1e", 0)]
    assert examples[0].image_path == "Flickr30K/flickr30k_images/42.jpg"
    assert DATASETS.get("snli-ve").label_names == LABELS
    assert DATASETS.get("snli-ve").annotation_files(tmp_path, "dev") == [
        tmp_path / "snli_ve_dev.jsonl"
    ]
    with pytest.raises(DataFileNotFoundError):
        read_examples("snli-ve", tmp_path, "dev", images_dir=".", check_files=True)


@pytest.mark.parametrize(
    "pair, field, message",
    [
        ({**PAIR, "gold_label": "-"}, "gold_label", "unknown gold_label '-'"),
        ({**PAIR, "sentence2": " "}, "sentence2", "empty text"),
        ({k: v for k, v in PAIR.items() if k != "Flickr30K_ID"}, "Flickr30K_ID", "image id"),
        ({**PAIR, "pairID": ""}, "pairID", "pairID"),
        (PAIR, "pairID", "duplicate pairID (first seen on line 1)"),
    ],
)
def test_bad_pairs_name_file_line_and_field(tmp_path, pair, field, message):
    write(tmp_path, PAIR, pair)
    with pytest.raises(DataError) as err:
        read_examples("snli-ve", tmp_path, "dev")
    assert (err.value.line, err.value.field) == (2, field) and message in str(err.value)
    result = read_examples("snli-ve", tmp_path, "dev", skip_bad=True)
    assert len(result.examples) == 1 and result.skipped[0].line == 2


def test_escaping_image_id_and_malformed_line(tmp_path):
    write(tmp_path, {**PAIR, "Flickr30K_ID": "../../x"})
    with pytest.raises(UnsafePathError):
        read_examples("snli-ve", tmp_path, "dev")
    write(tmp_path, '{"pairID": ', PAIR)
    result = read_examples("snli-ve", tmp_path, "dev", skip_bad=True)
    assert [ex.id for ex in result.examples] == ["42.jpg#0r1n"]
    assert "malformed JSON" in result.skipped[0].reason and result.skipped[0].line == 1


def test_unlabelled_pairs_have_no_label(tmp_path):
    write(tmp_path, {k: v for k, v in PAIR.items() if k != "gold_label"}, name="snli_ve_test.jsonl")
    [example] = read_examples("snli-ve", tmp_path, "test").examples
    assert (example.label, example.category) == (None, "unlabelled")
