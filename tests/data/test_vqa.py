import json

import pytest

from madcache.data import read_examples
from madcache.data.vqa import (answer_scores, load_answer_vocab, normalize_answer, soft_score,
                               vqa_accuracy)
from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError

FILES = {"questions_file": "multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
         "annotations_file": "multimodal_testdata/v2_mscoco_train2014_annotations.json"}


def _real(real_root, split="train", **options):
    return read_examples("vqa", real_root / "vqa_v2", split, **FILES, **options)


@pytest.mark.real
def test_real_questions_answers_and_soft_scores(real_root):
    examples = _real(real_root).examples
    assert [ex.id for ex in examples] == ["458752000", "458752001", "458752002", "458752003",
                                          "262146000"]
    first = examples[0]
    assert first.choices[0].text == "What is this photo taken looking through?"
    assert first.answers == ("net",) * 3 + ("netting",) + ("net",) * 2 + ("mesh",) + ("net",) * 3
    assert first.answer_scores == {"net": 1.0, "netting": 0.3, "mesh": 0.3}
    assert examples[3].answer_scores == {"yes": 1.0, "no": 0.3}
    assert first.image_path == "images/COCO_train2014_000000458752.jpg"
    assert first.image_id == "458752" and first.label is None
    assert [ex.category for ex in examples] == ["what", "what", "what color", "yes/no",
                                                "what color"]


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
    test = read_examples("vqa", real_root / "vqa_v2", "test",
                         questions_file=FILES["questions_file"]).examples
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
    assert answer_scores(["a"] * 3 + ["b"]) == {"a": 0.9, "b": 0.3}


def _write_vqa(root, questions, annotations, subtype="val2014"):
    (root / "questions").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "questions" / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(
        json.dumps({"questions": questions}))
    (root / "annotations" / f"v2_mscoco_{subtype}_annotations.json").write_text(
        json.dumps({"annotations": annotations}))


def _annotation(qid, image=1, answers=("two",) * 10):
    return {"question_id": qid, "image_id": image, "answers": [{"answer": a} for a in answers]}


def test_files_are_found_in_questions_and_annotations_folders(tmp_path):
    _write_vqa(tmp_path, [{"question_id": 1000, "image_id": 1, "question": "How many cats?"}],
               [_annotation(1000)])
    [ex] = read_examples("vqa", tmp_path, "val").examples
    assert ex.answers == ("2",) * 10 and ex.answer_scores == {"2": 1.0}
    assert ex.category == "how many" and ex.image_path == "COCO_val2014_000000000001.jpg"
    with pytest.raises(ConfigError, match="unknown VQA split"):
        read_examples("vqa", tmp_path, "dev")
    with pytest.raises(DataFileNotFoundError, match="questions_file"):
        read_examples("vqa", tmp_path, "train")


@pytest.mark.parametrize("questions, annotations, field, message", [
    ([{"question_id": 1, "image_id": 1, "question": ""}], [_annotation(1)],
     "questions[0].question", "empty text"),
    ([{"question_id": 1, "image_id": 2, "question": "Why?"}], [_annotation(1)],
     "questions[0]", "image_id 2 differs"),
    ([{"question_id": 1, "image_id": 1, "question": "Why?"}], [_annotation(2)],
     "questions[0]", "has no annotation"),
    ([{"question_id": "1", "image_id": 1, "question": "Why?"}], [_annotation(1)],
     "questions[0].question_id", "must be an integer"),
    ([{"question_id": 1, "image_id": 1, "question": "Why?"}], [_annotation(1, answers=())],
     "annotations[0].answers", "non-empty list"),
])
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

