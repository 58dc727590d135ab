import json

import pytest
from click.testing import CliRunner

from madcache.cli import cli
from madcache.data.lowshot import load_split

VCR_CS = "annotations/vcr_cs_val_original.jsonl"
RECORD = {
    "annot_id": "val-1",
    "objects": ["person", "person"],
    "img_fn": "m/a.jpg",
    "metadata_fn": "m/a.json",
    "question": ["Is", [0], "ok", "?"],
    "answer_choices": [[[0], "is", "."], [[1], "is", "."], ["no"], ["yes"]],
    "rationale_choices": [["a"], ["b"], ["c"], ["d"]],
    "answer_label": 0,
    "rationale_label": 2,
}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.real
def test_stats_json_on_snli_ve(real_root):
    result = run(
        "data",
        "stats",
        "--dataset",
        "snli-ve",
        "--root",
        real_root / "snli_ve" / "allennlp_fixture",
        "--split",
        "sample_pairs.jsonl",
        "--json",
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["examples"], stats["images"], stats["skipped"]) == (16, 2, [])
    assert stats["labels"] == {"contradiction": 4, "entailment": 6, "neutral": 6}
    assert stats["categories"] == stats["labels"]


@pytest.mark.real
def test_stats_on_vcr_cs_fails_cleanly_then_skips_bad(real_root):
    args = ["data", "stats", "--dataset", "vcr", "--root", real_root / "vcr", "--split", VCR_CS]
    strict = run(*args)
    assert strict.exit_code == 2 and "Traceback" not in strict.output
    assert "vcr_cs_val_original.jsonl:98, field 'annot_id'" in strict.output
    lenient = run(*args, "--skip-bad", "--json")
    stats = json.loads(lenient.output)
    assert stats["examples"] == 304 and len(stats["skipped"]) == 7
    assert stats["skipped"][0]["line"] == 98 and stats["categories"]["mental"] == 102
    table = run(*args, "--skip-bad", "--read-option", "modes=qa")
    assert table.exit_code == 0
    assert "vcr: 152 examples, 143 images, 7 skipped" in table.output
    assert "skipped " in table.output and ":159 field annot_id" in table.output


@pytest.mark.real
def test_stats_vqa_with_options(real_root):
    result = run(
        "data",
        "stats",
        "--dataset",
        "vqa",
        "--root",
        real_root / "vqa_v2",
        "--split",
        "train",
        "--json",
        "--read-option",
        "questions_file=multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
        "--read-option",
        "annotations_file=multimodal_testdata/v2_mscoco_train2014_annotations.json",
        "--read-option",
        "check_files=true",
        "--skip-bad",
    )
    stats = json.loads(result.output)
    assert stats["examples"] == 4 and stats["images"] == 1 and stats["labels"] == {"none": 4}
    assert stats["skipped"][0]["record_id"] == "262146000"


@pytest.mark.real
def test_lowshot_writes_a_loadable_split(real_root, tmp_path):
    out = tmp_path / "split.json"
    result = run(
        "data",
        "lowshot",
        "--dataset",
        "vcr",
        "--root",
        real_root / "vcr",
        "--split",
        VCR_CS,
        "--skip-bad",
        "--per-category",
        10,
        "--seed",
        0,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "110 examples from 55 groups" in result.output
    assert "shortfall: hypothetical has 5 of 10" in result.output
    split = load_split(out)
    assert len(split.ids) == 110 and len(split.params["skipped_records"]) == 7


def test_sm_writes_val_jsonl_and_report(tmp_path):
    (tmp_path / "val.jsonl").write_text(json.dumps(RECORD) + "\n")
    result = run(
        "data", "sm", "--root", tmp_path, "--split", "val", "--out", tmp_path / "sm", "--into-root"
    )
    assert result.exit_code == 0, result.output
    assert "1 of 1 records in the SM split (singular 1, plural 0)" in result.output
    [changed] = [json.loads(line) for line in (tmp_path / "sm" / "val.jsonl").open()]
    assert changed["answer_choices"][:2] == [["He", "is", "."], [[0], "is", "."]]
    report = json.loads((tmp_path / "sm" / "sm_report.json").read_text())
    assert report["rules"]["singular"] == {
        "records": 1,
        "answer_choices": 2,
        "rationale_choices": 0,
    }


def test_bad_input_gives_one_line_errors(tmp_path):
    (tmp_path / "val.jsonl").write_text(json.dumps({**RECORD, "img_fn": "../x.jpg"}) + "\n")
    base = ["data", "stats", "--dataset", "vcr", "--root", tmp_path, "--split", "val"]
    escaped = run(*base)
    assert escaped.exit_code == 2 and "escapes the dataset root" in escaped.output
    assert "Traceback" not in escaped.output
    unknown = run(*base, "--read-option", "colour=red")
    assert unknown.exit_code == 2 and "Valid options" in unknown.output
    malformed = run(*base, "--read-option", "renderer")
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output
    missing = run("data", "stats", "--dataset", "snli-ve", "--root", tmp_path, "--split", "dev")
    assert missing.exit_code == 2 and "annotation file not found" in missing.output


@pytest.mark.real
def test_sm_on_the_real_vcr_sample_keeps_only_qualifying_records(real_root, tmp_path):
    result = run("data", "sm", "--root", real_root / "vcr", "--split", VCR_CS, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (
        "128 of 159 records in the SM split (singular 106, plural 22); 31 fit neither rule"
        in result.output
    )
    written = tmp_path / "vcr_cs_val_original.jsonl"
    kept = [json.loads(line)["annot_id"] for line in written.open()]
    report = json.loads((tmp_path / "sm_report.json").read_text())
    assert len(kept) == 128 and not set(kept) & set(report["not_qualifying"])
