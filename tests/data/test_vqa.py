import json

import pytest

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.data import iter_examples, read_examples
from madcache.data.records import Example, Text
from madcache.data.vqa import (
    answer_scores,
    build_answer_vocab,
    load_answer_vocab,
    normalize_answer,
    process_punctuation,
    read_vqa_results,
    soft_score,
    vqa_accuracy,
)

FILES = {
    "questions_file": "multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
    "annotations_file": "multimodal_testdata/v2_mscoco_train2014_annotations.json",
}


def _real(real_root, split="train", **options):
    return read_examples("vqa", real_root / "vqa_v2", split, **FILES, **options)


@pytest.mark.real
def test_real_questions_answers_and_soft_scores(real_root):
    examples = _real(real_root).examples
    assert [ex.id for ex in examples] == [
        "458752000",
        "458752001",
        "458752002",
        "458752003",
        "262146000",
    ]
    first = examples[0]
    assert first.choices[0].text == "What is this photo taken looking through?"
    assert first.answers == ("net",) * 3 + ("netting",) + ("net",) * 2 + ("mesh",) + ("net",) * 3
    assert first.answer_scores == {"net": 1.0, "netting": 0.3, "mesh": 0.3}
    assert examples[3].answer_scores == {"yes": 1.0, "no": 0.3}
    assert first.image_path == "images/COCO_train2014_000000458752.jpg"
    assert first.image_id == "458752" and first.label is None
    assert [ex.category for ex in examples] == [
        "what",
        "what",
        "what color",
        "yes/no",
        "what color",
    ]
    only = iter_examples(
        "vqa", real_root / "vqa_v2", "train", only={"458752003", "262146000"}, **FILES
    )
    assert list(only) == examples[3:]


@pytest.mark.real
def test_vqa_accuracy_by_hand_on_real_answers(real_root):
    examples = _real(real_root).examples
    # 8 x net, netting, mesh: every leave-one-out set keeps >= 7 nets
    assert vqa_accuracy("net", examples[0].answers) == 1.0
    # netting: 9 sets hold it once (1/3), the set without it holds it 0 times
    assert vqa_accuracy("Netting.", examples[0].answers) == pytest.approx(0.3)
    # 9 x yes, 1 x no
    assert vqa_accuracy("no", examples[3].answers) == pytest.approx(9 / 3 / 10)
    assert vqa_accuracy("Yes!", examples[3].answers) == 1.0
    assert vqa_accuracy("blue", examples[2].answers) == 0.0


@pytest.mark.real
def test_missing_image_and_test_split(real_root):
    with pytest.raises(DataFileNotFoundError) as err:
        _real(real_root, check_files=True)
    assert err.value.record_id == "262146000" and err.value.field == "questions[4]"
    result = _real(real_root, check_files=True, skip_bad=True)
    assert len(result.examples) == 4 and result.skipped[0].record_id == "262146000"
    test = read_examples(
        "vqa", real_root / "vqa_v2", "test", questions_file=FILES["questions_file"]
    ).examples
    assert len(test) == 5 and test[0].answers == () and test[0].answer_scores is None
    assert test[0].image_path == "images/COCO_test2015_000000458752.jpg"


@pytest.mark.real
def test_answer_vocabularies(real_root):
    vocab = real_root / "vqa_v2" / "answer_vocab"
    label2ans = load_answer_vocab(vocab / "lxmert" / "trainval_label2ans.json")
    ans2label = load_answer_vocab(vocab / "lxmert" / "trainval_ans2label.json")
    mcan = load_answer_vocab(vocab / "mcan" / "answer_dict.json")
    mmf = load_answer_vocab(vocab / "mmf" / "answers_vqa.txt")
    assert (len(label2ans), len(ans2label), len(mcan), len(mmf)) == (3129, 3129, 3129, 3129)
    assert label2ans[0] == "" and label2ans[1] == "woods" and ans2label == label2ans
    assert mcan[:3] == ["net", "pitcher", "orange"] and set(mcan) == set(label2ans)
    assert mmf[0] == "<unk>" and mmf[-1] == "zucchini" and set(mmf[1:]) == set(label2ans) - {""}


def test_answer_normalisation_follows_the_official_evaluator():
    assert normalize_answer("Two dogs!") == "2 dogs"
    assert normalize_answer("A Dog") == "dog"
    assert normalize_answer("dont know") == "don't know"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("yes.") == "yes"
    assert normalize_answer("black/white") == "black white"
    assert [soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert answer_scores(["red"] * 3 + ["blue"]) == {"red": 0.9, "blue": 0.3}


# Hand-computed against vqaEval.py (GT-Vision-Lab/VQA): the prediction is cleaned and fully
# processed; the human answers get processPunctuation only, and only when they disagree.


def test_agreeing_humans_are_compared_unprocessed():
    # ten identical "two": the humans stay "two", the prediction becomes "2" -> never a match
    assert vqa_accuracy("two", ["two"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes."] * 10) == 0.0  # "yes." vs the prediction "yes"
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0


def test_disagreeing_humans_get_punctuation_processing_only():
    # "yes." -> "yes": all ten match the prediction "Yes" -> "yes"
    assert vqa_accuracy("Yes", ["yes."] * 3 + ["yes"] * 7) == 1.0
    # no digit/article step on humans: "the dog" stays, the prediction "the dog" becomes "dog";
    # 8 sets without a "the dog" hold 2 "dog" (2/3), 2 sets without a "dog" hold 1 (1/3)
    assert vqa_accuracy("the dog", ["the dog"] * 8 + ["dog"] * 2) == pytest.approx(
        (8 * 2 / 3 + 2 * 1 / 3) / 10
    )
    # "two" x 9 + "2": only the "2" matches the prediction "two" -> "2"
    assert vqa_accuracy("two", ["two"] * 9 + ["2"]) == pytest.approx(9 * (1 / 3) / 10)
    # the digit comma: "1,000" -> "1000" on both sides
    assert vqa_accuracy("1,000", ["1,000"] * 5 + ["1000"] * 5) == 1.0


def test_prediction_cleaning_and_the_period_count_quirk():
    assert vqa_accuracy("\tRed\n", ["red"] * 2 + ["blue"] * 8) == pytest.approx(
        (8 * 2 / 3 + 2 * 1 / 3) / 10
    )
    # `periodStrip.sub("", text, re.UNICODE)`: re.UNICODE (32) is taken as the count
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("3.5 m.") == "3.5 m"


def test_training_targets_and_vocabulary_use_normalised_answers():
    assert answer_scores(["Two", "two", "2", "three"]) == {"2": 0.9, "3": 0.3}
    examples = [
        Example(
            id=str(i),
            dataset="vqa",
            split="val",
            image_id="1",
            image_path="1.jpg",
            choices=(Text.from_string("how many?"),),
            label=None,
            category="how many",
            answers=answers,
        )
        for i, answers in enumerate([("Two", "two"), ("2", "A Cat", "<unk>")])
    ]
    assert build_answer_vocab(examples, 5) == ["2", "cat"]


def test_results_file_reads_the_official_format(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps([{"question_id": 5, "answer": "red"}, {"question_id": 7, "answer": "2"}])
    )
    assert read_vqa_results(path) == {"5": "red", "7": "2"}
    path.write_text(json.dumps([{"question_id": "5", "answer": "red"}]))
    with pytest.raises(DataError, match="question_id must be an integer"):
        read_vqa_results(path)
    path.write_text(
        json.dumps([{"question_id": 5, "answer": "a"}, {"question_id": 5, "answer": "b"}])
    )
    with pytest.raises(DataError, match="duplicate question_id"):
        read_vqa_results(path)
    path.write_text(json.dumps({"question_id": 5, "answer": "red"}))
    with pytest.raises(DataError, match="JSON list"):
        read_vqa_results(path)


def _write_vqa(root, questions, annotations, subtype="val2014"):
    (root / "questions").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "questions" / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(
        json.dumps({"questions": questions})
    )
    (root / "annotations" / f"v2_mscoco_{subtype}_annotations.json").write_text(
        json.dumps({"annotations": annotations})
    )


def _annotation(qid, image=1, answers=("two",) * 10):
    return {"question_id": qid, "image_id": image, "answers": [{"answer": a} for a in answers]}


def test_files_are_found_in_questions_and_annotations_folders(tmp_path):
    _write_vqa(
        tmp_path,
        [{"question_id": 1000, "image_id": 1, "question": "How many cats?"}],
        [_annotation(1000)],
    )
    [ex] = read_examples("vqa", tmp_path, "val").examples
    assert ex.answers == ("two",) * 10 and ex.answer_scores == {"2": 1.0}
    assert ex.category == "how many" and ex.image_path == "COCO_val2014_000000000001.jpg"
    with pytest.raises(ConfigError, match="unknown VQA split"):
        read_examples("vqa", tmp_path, "dev")
    with pytest.raises(DataFileNotFoundError, match="questions_file"):
        read_examples("vqa", tmp_path, "train")


@pytest.mark.parametrize(
    "questions, annotations, field, message",
    [
        (
            [{"question_id": 1, "image_id": 1, "question": ""}],
            [_annotation(1)],
            "questions[0].question",
            "empty text",
        ),
        (
            [{"question_id": 1, "image_id": 2, "question": "Why?"}],
            [_annotation(1)],
            "questions[0]",
            "image_id 2 differs",
        ),
        (
            [{"question_id": 1, "image_id": 1, "question": "Why?"}],
            [_annotation(2)],
            "questions[0]",
            "has no annotation",
        ),
        (
            [{"question_id": "1", "image_id": 1, "question": "Why?"}],
            [_annotation(1)],
            "questions[0].question_id",
            "must be an integer",
        ),
        (
            [{"question_id": 1, "image_id": 1, "question": "Why?"}],
            [_annotation(1, answers=())],
            "annotations[0].answers",
            "non-empty list",
        ),
    ],
)
def test_bad_questions_and_annotations(tmp_path, questions, annotations, field, message):
    _write_vqa(tmp_path, questions, annotations)
    with pytest.raises(DataError) as err:
        read_examples("vqa", tmp_path, "val")
    assert err.value.field == field and message in str(err.value)
    assert err.value.file.endswith(".json")
    assert read_examples("vqa", tmp_path, "val", skip_bad=True).examples == []


def test_malformed_vocab_and_json(tmp_path):
    bad = tmp_path / "v.json"
    bad.write_text('{"a": 0, "b": 2}')
    with pytest.raises(DataError, match="0..n-1"):
        load_answer_vocab(bad)
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="repeated"):
        load_answer_vocab(tmp_path / "dup.txt")
    (tmp_path / "plain.txt").write_text("x\ny\n")
    assert load_answer_vocab(tmp_path / "plain.txt") == ["x", "y"]
    _write_vqa(tmp_path, [], [])
    (tmp_path / "questions" / "v2_OpenEnded_mscoco_val2014_questions.json").write_text("{oops")
    with pytest.raises(DataError, match="malformed JSON"):
        read_examples("vqa", tmp_path, "val")


def test_a_plain_text_vocabulary_that_is_not_utf8_is_one_cli_line(demo_root, tmp_path):
    from click.testing import CliRunner

    from madcache.cli import cli

    vocab = tmp_path / "answers-latin1.txt"
    vocab.write_bytes("yes\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8: byte 0xe9") as err:
        load_answer_vocab(vocab)
    assert err.value.file == str(vocab) and err.value.line == 2
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dataset",
            "vqa",
            "--root",
            str(demo_root / "vqa"),
            "--student",
            "vilt",
            "--student-option",
            f"answer_vocab={vocab}",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"Error: {vocab}:2: not UTF-8: byte 0xe9 at offset 7; save the answer vocabulary as "
        "UTF-8, one answer per line"
    ]
    assert not (tmp_path / "run").exists()
