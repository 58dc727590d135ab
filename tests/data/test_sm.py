import json

import pytest

from madcache.data import read_examples
from madcache.data.sm import (NO_QUESTION_PERSON, mitigate_record, rule_of, shortcut_mitigate,
                              shortcut_mitigate_file)
from madcache.core.errors import ConfigError, DataError

VCR_CS = "annotations/vcr_cs_val_original.jsonl"


@pytest.fixture(scope="module")
def sm_output(real_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sm") / "val.jsonl"
    report = shortcut_mitigate_file(real_root / "vcr" / VCR_CS, out)
    originals = [json.loads(line) for line in (real_root / "vcr" / VCR_CS).open()]
    changed = [json.loads(line) for line in out.open()]
    return report, originals, changed, out


@pytest.mark.real
def test_report_counts_on_vcr_cs(sm_output):
    report, originals, changed, _ = sm_output
    assert (report.records, report.changed, report.unchanged) == (159, 93, 66)
    assert report.rules == {"plural": 53, "singular": 106}
    assert report.changed_ids[:4] == ["val-35", "val-37", "val-41", "val-44"]
    assert len(changed) == 159


@pytest.mark.real
def test_hand_checked_records(sm_output):
    _, originals, changed, _ = sm_output
    by_id = {r["annot_id"]: r for r in changed}
    # val-35, singular: "What is [0] thinking ?", correct answer 3 -> another person ([2]),
    # incorrect answers' persons -> [0]; the chair [9] is not a person and stays.
    val35 = by_id["val-35"]["answer_choices"]
    assert val35[3][:5] == [[2], "is", "wondering", "if", [1]]
    assert val35[0][0] == [0] and val35[1][2] == [0] and val35[1][7] == [9]
    assert val35[2] == originals[0]["answer_choices"][2]
    # val-41, plural: question persons [4] and [6]; the correct answer's [6] -> first free [0]
    val41 = by_id["val-41"]["answer_choices"]
    assert val41[1] == [[0], "would", "accept", "the", "drink", "."]
    assert val41[3] == [[4], "would", "start", "to", "talk", "with", [6], "."]
    # val-72, singular: "How is [0] feeling ?" with persons 0 and 1 only
    val72 = by_id["val-72"]["answer_choices"]
    assert [choice[0] for choice in val72] == [[0], [1], "They", [0]]


@pytest.mark.real
def test_labels_and_other_keys_are_kept(sm_output):
    _, originals, changed, _ = sm_output
    for before, after in zip(originals, changed):
        assert list(after) == list(before)
        assert {k: v for k, v in after.items() if k != "answer_choices"} == \
            {k: v for k, v in before.items() if k != "answer_choices"}


@pytest.mark.real
def test_reread_with_the_vcr_reader_and_example_level_transform_agree(sm_output, real_root):
    _, _, _, out = sm_output
    reread = read_examples("vcr", real_root / "vcr", "val", annotations=str(out), skip_bad=True)
    assert len(reread.examples) == 304 and len(reread.skipped) == 7
    by_id = {ex.id: ex for ex in reread.examples}
    assert by_id["val-35:qa"].choices[3].text == "person3 is wondering if person2 is going to " \
                                                 "kiss her ."
    assert by_id["val-35:qa"].label == 3
    original = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True).examples
    transformed = shortcut_mitigate(original)
    assert [ex.texts for ex in transformed] == [ex.texts for ex in reread.examples]
    named = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True, renderer="name")
    sm_named = {ex.id: ex for ex in shortcut_mitigate(named.examples)}
    assert sm_named["val-35:qar"].context.text.endswith("? Jessie is wondering if Riley is going "
                                                        "to kiss her .")


def test_records_without_question_persons_are_kept_and_counted(tmp_path):
    record = {"annot_id": "a", "objects": ["person", "dog"], "img_fn": "x.jpg",
              "metadata_fn": "x.json", "question": ["Why", "?"],
              "answer_choices": [[[0], "."], ["b"], ["c"], ["d"]],
              "rationale_choices": [["a"], ["b"], ["c"], ["d"]], "answer_label": 0}
    new, reason = mitigate_record(record)
    assert new == record and reason == NO_QUESTION_PERSON and rule_of(record) == "none"
    dog = {**record, "question": ["Is", [1], "hungry", "?"]}
    assert mitigate_record(dog)[1] == NO_QUESTION_PERSON  # a dog is not a person tag
    source = tmp_path / "val.jsonl"
    source.write_text(json.dumps(record) + "\n{broken\n")
    with pytest.raises(DataError, match="malformed JSON"):
        shortcut_mitigate_file(source, tmp_path / "out" / "val.jsonl")
    report = shortcut_mitigate_file(source, tmp_path / "out" / "val.jsonl", skip_bad=True)
    assert (report.records, report.unchanged, report.skipped[0].line) == (1, 1, 2)
    assert report.unchanged_ids == {NO_QUESTION_PERSON: ["a"]}


def test_example_level_transform_refuses_other_datasets():
    from madcache.data.records import Example, Text

    ex = Example(id="1", dataset="vqa", split="val", image_id="i", image_path="i.jpg",
                 choices=(Text.from_string("q"),), label=None, category="what")
    with pytest.raises(ConfigError, match="VCR examples"):
        shortcut_mitigate([ex])
