"""SM = Ye & Kovashka's rule-based rephrasing (tools/rephrase_choice_{singular,plural}.py),
checked by hand on real VCR records and on the quirks of their scripts."""

import json

import pytest

from madcache.core.errors import ConfigError, DataError
from madcache.data import read_examples
from madcache.data.sm import (
    likely_pronoun,
    mitigate_record,
    rule_of,
    shortcut_mitigate,
    shortcut_mitigate_file,
)

VCR_CS = "annotations/vcr_cs_val_original.jsonl"


def record(
    question,
    answers,
    rationales=None,
    *,
    objects=("person",) * 4 + ("tie",),
    answer_label=0,
    rationale_label=0,
):
    return {
        "annot_id": "a",
        "objects": list(objects),
        "img_fn": "x.jpg",
        "metadata_fn": "x.json",
        "question": question,
        "answer_choices": answers,
        "rationale_choices": rationales or [["r"], ["s"], ["t"], ["u"]],
        "answer_label": answer_label,
        "rationale_label": rationale_label,
    }


@pytest.fixture(scope="module")
def sm_output(real_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sm") / "val.jsonl"
    report = shortcut_mitigate_file(real_root / "vcr" / VCR_CS, out)
    originals = {}
    for line in (real_root / "vcr" / VCR_CS).open():
        originals.setdefault(json.loads(line)["annot_id"], json.loads(line))
    written = [json.loads(line) for line in out.open()]
    return report, originals, written, out


@pytest.mark.real
def test_report_counts_per_rule_on_vcr_cs(sm_output):
    report, _, written, _ = sm_output
    assert (report.records, report.written, len(report.not_qualifying)) == (159, 128, 31)
    rules = report.to_json()["rules"]
    assert rules["singular"] == {"records": 106, "answer_choices": 311, "rationale_choices": 217}
    assert rules["plural"] == {"records": 22, "answer_choices": 75, "rationale_choices": 59}
    assert len(written) == 128
    # val-41 asks about [4] and [6] in two tag groups: neither rule, so not in the SM split
    assert "val-41" in report.not_qualifying
    assert "val-41" not in {r["annot_id"] for r in written}


@pytest.mark.real
def test_singular_rule_by_hand_on_real_records(sm_output):
    _, originals, written, _ = sm_output
    by_id = {r["annot_id"]: r for r in written}
    # val-35 "What is [0] thinking ?" (right answer 3, right rationale 2)
    val35 = by_id["val-35"]
    # wrong answer with only a pronoun: both "She" and "she" become the question's person
    assert val35["answer_choices"][2] == [
        [0],
        "can",
        "'",
        "t",
        "believe",
        "what",
        [0],
        "is",
        "seeing",
        ".",
    ]
    assert val35["rationale_choices"][0][0] == [0]  # wrong rationale: [5] -> [0]
    # a tag plus a pronoun is two mentions: untouched, also the right answer naming [0] and [1]
    assert val35["answer_choices"][0] == originals["val-35"]["answer_choices"][0]
    assert val35["answer_choices"][3] == originals["val-35"]["answer_choices"][3]
    # val-72 "How is [0] feeling ?": right answer -> "He" (no gendered word anywhere: default)
    assert by_id["val-72"]["answer_choices"][1] == ["He", "is", "distressed", "."]
    assert by_id["val-72"]["answer_choices"][0][0] == [0]  # wrong: [1] -> [0]
    # val-6032 "What is [3] doing while she sits ?": the pronoun comes from the question
    assert by_id["val-6032"]["answer_choices"][by_id["val-6032"]["answer_label"]][:2] == [
        "She",
        "is",
    ]
    # val-8765: "her" in the choice; lower case after the first token
    assert by_id["val-8765"]["answer_choices"][by_id["val-8765"]["answer_label"]][:4] == [
        "Yes",
        ",",
        "she",
        "has",
    ]
    # val-6897: their rule turns the one person of the right answer into a pronoun even when
    # it is not the question's person ("Offer to escort [4] to her car .")
    assert by_id["val-6897"]["answer_choices"][by_id["val-6897"]["answer_label"]][:4] == [
        "Offer",
        "to",
        "escort",
        "she",
    ]


@pytest.mark.real
def test_plural_rule_by_hand_on_real_records(sm_output):
    _, originals, written, _ = sm_output
    by_id = {r["annot_id"]: r for r in written}
    # val-1658 "Did [5, 8] start this fire ?" (right answer 2)
    val1658 = by_id["val-1658"]["answer_choices"]
    assert val1658[2][:3] == ["Yes", ",", "they"]  # right: the group -> "they"
    assert val1658[1][:2] == ["No", [5, 8]]  # wrong: "they" -> the group
    # val-1869 "What are [12, 9] doing ?": the group is compared sorted ([9, 12]), so the
    # unsorted [12, 9] of a wrong answer stays (exact token equality, as in their script)
    val1869 = by_id["val-1869"]["answer_choices"]
    assert val1869[0] == originals["val-1869"]["answer_choices"][0]
    assert val1869[2][0] == [9, 12]
    # val-464: [6, 0] holds a tie, so it is not a person group; a wrong answer keeps it
    assert by_id["val-464"]["answer_choices"][2] == originals["val-464"]["answer_choices"][2]
    # rationales too: val-211's right rationale 2 "[4, 5] appear ..." -> "They appear ..."
    assert by_id["val-211"]["rationale_choices"][2][0] == "They"


@pytest.mark.real
def test_labels_and_other_keys_are_kept(sm_output, real_root):
    _, _, written, _ = sm_output
    lines = [json.loads(line) for line in (real_root / "vcr" / VCR_CS).open()]
    kept = [r for r in lines if rule_of(r) is not None]  # in order, duplicates included
    assert len(kept) == len(written)
    for before, after in zip(kept, written):
        assert list(after) == list(before)
        changed = {"answer_choices", "rationale_choices"}
        assert {k: v for k, v in after.items() if k not in changed} == {
            k: v for k, v in before.items() if k not in changed
        }


@pytest.mark.real
def test_sm_examples_use_the_rephrased_answers_and_rationales(sm_output, real_root):
    _, _, _, out = sm_output
    reread = read_examples("vcr", real_root / "vcr", "val", annotations=str(out), skip_bad=True)
    by_id = {ex.id: ex for ex in reread.examples}
    assert by_id["val-72:qa"].choices[1].text == "He is distressed ."
    qar = by_id["val-211:qar"]  # QA->R: rephrased rationales after the right answer
    assert qar.choices[2].text.startswith("They appear to be walking")
    original = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True).examples
    transformed = shortcut_mitigate(original)
    assert [ex.id for ex in transformed] == [ex.id for ex in reread.examples]
    assert [ex.texts for ex in transformed] == [ex.texts for ex in reread.examples]
    assert not any(ex.id.startswith("val-41:") for ex in transformed)
    named = read_examples("vcr", real_root / "vcr", VCR_CS, skip_bad=True, renderer="name")
    sm_named = {ex.id: ex for ex in shortcut_mitigate(named.examples)}
    assert sm_named["val-72:qar"].context.text == "How is Casey feeling ? He is distressed ."


def test_singular_rule_quirks():
    question = ["Why", "is", [0], "here", "?"]
    answers = [
        [[1], "is", "waiting", "for", "his", "friend", "."],  # right, "his" -> he
        [[2, 4], "is", "nice", "."],  # [2] with a tie: kept
        ["HE", "left", "."],  # counts, not replaced
        [[3], "and", [3], "wait", "."],
    ]  # one person, twice
    done = mitigate_record(record(question, answers))
    assert done.rule == "singular" and done.answers == 4
    new = done.record["answer_choices"]
    assert new[0] == ["He", "is", "waiting", "for", "his", "friend", "."]
    assert new[1] == answers[1]
    assert new[2] == ["HE", "left", "."]
    assert new[3] == [[0], "and", [0], "wait", "."]
    assert likely_pronoun(["her", "him", "her"], ["he"]) == "she"
    assert likely_pronoun(["her", "him"], ["She"]) == "she"  # tie: the question decides
    assert likely_pronoun(["a"], ["b"]) == "he"


def test_plural_rule_and_who_is_left_out():
    question = ["Are", [1, 0], "friends", "?"]
    answers = [
        ["Yes", ",", [0, 1], "are", "."],
        ["No", "they", "are", "not", "."],
        [[1, 0], "argue", "."],
        [[2, 3], "and", [0], "argue", "."],
    ]
    done = mitigate_record(record(question, answers))
    assert done.rule == "plural" and done.answers == 3
    new = done.record["answer_choices"]
    assert new[0] == ["Yes", ",", "they", "are", "."]
    assert new[1] == ["No", [0, 1], "are", "not", "."]
    assert new[2] == [[1, 0], "argue", "."]  # unsorted: not equal to the sorted group
    assert new[3] == answers[3]  # two tag groups: not a person group
    assert rule_of(record(["Why", "?"], answers)) is None
    assert rule_of(record(["Is", [4], "red", "?"], answers)) is None  # a tie, no person
    assert rule_of(record(["Do", [0], "and", [1], "talk", "?"], answers)) is None
    assert rule_of(record(["Do", [0, 4], "match", "?"], answers)) == "singular"
    assert rule_of(record(["Are", [0, 0], "ok", "?"], answers)) == "singular"  # both: singular
    assert mitigate_record(record(["Why", "?"], answers)) is None


def test_files_leave_out_unqualified_and_refuse_unlabelled(tmp_path):
    keep = record(["Is", [0], "ok", "?"], [[[0], "is", "."], [[1], "is", "."], ["no"], ["yes"]])
    drop = {**keep, "annot_id": "b", "question": ["Why", "?"]}
    source = tmp_path / "val.jsonl"
    source.write_text(json.dumps(keep) + "\n" + json.dumps(drop) + "\n{broken\n")
    with pytest.raises(DataError, match="malformed JSON"):
        shortcut_mitigate_file(source, tmp_path / "out" / "val.jsonl")
    report = shortcut_mitigate_file(source, tmp_path / "out" / "val.jsonl", skip_bad=True)
    assert (report.records, report.written, report.not_qualifying) == (2, 1, ["b"])
    assert report.skipped[0].line == 3
    [kept] = [json.loads(line) for line in (tmp_path / "out" / "val.jsonl").open()]
    assert kept["answer_choices"][:2] == [["He", "is", "."], [[0], "is", "."]]
    unlabelled = {k: v for k, v in keep.items() if k != "rationale_label"}
    source.write_text(json.dumps(unlabelled) + "\n")
    with pytest.raises(DataError, match="has answer_label but no rationale_label"):
        shortcut_mitigate_file(source, tmp_path / "out" / "val.jsonl")


def test_example_level_transform_refuses_other_datasets():
    from madcache.data.records import Example, Text

    ex = Example(
        id="1",
        dataset="vqa",
        split="val",
        image_id="i",
        image_path="i.jpg",
        choices=(Text.from_string("q"),),
        label=None,
        category="what",
    )
    with pytest.raises(ConfigError, match="VCR examples"):
        shortcut_mitigate([ex])
