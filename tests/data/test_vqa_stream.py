"""The VQA reader parses its two JSON files incrementally and joins them by question id: the
same examples, refusals and skipped records as a whole-file parse, in step when the files list
the same ids in the same order, keyed when they do not."""

import json

import pytest

from madcache.core.errors import DataError
from madcache.data import iter_examples, read_examples
from madcache.data.jsonl import iter_json_list
from madcache.data.vqa import _Annotations, answer_scores

REAL_FILES = {
    "questions_file": "multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
    "annotations_file": "multimodal_testdata/v2_mscoco_train2014_annotations.json",
}
QUESTIONS = "questions/v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = "annotations/v2_mscoco_val2014_annotations.json"


def _whole_parse(questions_path, annotations_path):
    """What each example holds, from `json.load` of both files (the reference)."""
    questions = json.loads(questions_path.read_text())["questions"]
    annotations = json.loads(annotations_path.read_text())["annotations"]
    by_id = {a["question_id"]: a for a in annotations}
    return [
        (
            str(q["question_id"]),
            str(q["image_id"]),
            q["question"],
            tuple(a["answer"] for a in by_id[q["question_id"]]["answers"]),
            q,
        )
        for q in questions
    ]


def _fields(examples):
    return [(ex.id, ex.image_id, ex.choices[0].text, ex.answers, ex.raw) for ex in examples]


def _in_step_only(monkeypatch):
    """Fail if the annotations are read keyed (so a test shows the in-step path ran)."""

    def keyed(self):
        raise AssertionError("read keyed")

    monkeypatch.setattr(_Annotations, "_read_keyed", keyed)


def _question(qid, image=1, text="How many cats?"):
    return {"image_id": image, "question": text, "question_id": qid}


def _annotation(qid, image=1, answers=("two",) * 10):
    return {"question_id": qid, "image_id": image, "answers": [{"answer": a} for a in answers]}


def _write(root, questions, annotations):
    for relative, key, records in (
        (QUESTIONS, "questions", questions),
        (ANNOTATIONS, "annotations", annotations),
    ):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": {"year": 2017}, key: records}))


def _fixture(n=6):
    """Questions on three images with distinct answers (so a wrong join shows)."""
    questions = [_question(100 + i, image=i // 2, text=f"What is {i}?") for i in range(n)]
    annotations = [
        _annotation(100 + i, image=i // 2, answers=(f"a{i}",) * 4 + ("b",) * 6) for i in range(n)
    ]
    return questions, annotations


@pytest.mark.real
def test_the_real_sample_is_read_in_step_as_a_whole_parse_reads_it(real_root, monkeypatch):
    root = real_root / "vqa_v2"
    _in_step_only(monkeypatch)
    examples = read_examples("vqa", root, "train", **REAL_FILES).examples
    expected = _whole_parse(
        root / REAL_FILES["questions_file"], root / REAL_FILES["annotations_file"]
    )
    assert _fields(examples) == expected
    assert all(type(ex.raw) is dict for ex in examples)
    assert examples[0].answer_scores == answer_scores(expected[0][3])


def test_files_in_different_orders_are_joined_by_id(tmp_path, monkeypatch):
    questions, annotations = _fixture()
    _write(tmp_path / "ordered", questions, annotations)
    _write(tmp_path / "shuffled", questions, [annotations[i] for i in (3, 0, 5, 1, 4, 2)])
    shuffled = read_examples("vqa", tmp_path / "shuffled", "val").examples
    assert _fields(shuffled) == _whole_parse(
        tmp_path / "shuffled" / QUESTIONS, tmp_path / "shuffled" / ANNOTATIONS
    )
    assert shuffled[2].answers == ("a2",) * 4 + ("b",) * 6
    _in_step_only(monkeypatch)
    assert read_examples("vqa", tmp_path / "ordered", "val").examples == shuffled


def test_a_join_that_starts_in_step_and_then_differs(tmp_path):
    questions, annotations = _fixture()
    # in step for two questions; then an extra annotation, and the last two swapped
    _write(
        tmp_path,
        questions,
        [*annotations[:2], _annotation(999), *annotations[2:4], annotations[5], annotations[4]],
    )
    examples = read_examples("vqa", tmp_path, "val").examples
    assert _fields(examples) == _whole_parse(tmp_path / QUESTIONS, tmp_path / ANNOTATIONS)
    only = iter_examples("vqa", tmp_path, "val", only={"101", "105"})
    assert [(ex.id, ex.answers[0]) for ex in only] == [("101", "a1"), ("105", "a5")]


def test_an_annotations_error_comes_before_an_earlier_questions_error(tmp_path, monkeypatch):
    questions, annotations = _fixture()
    questions[0]["question"] = ""
    annotations[5]["answers"] = []
    annotations.append(_annotation(101, image=0))  # a second annotation of question 101
    _write(tmp_path, questions, annotations)
    with pytest.raises(DataError, match="non-empty list") as err:
        read_examples("vqa", tmp_path, "val")
    assert err.value.field == "annotations[5].answers"
    result = read_examples("vqa", tmp_path, "val", skip_bad=True)
    assert [(s.field, s.reason) for s in result.skipped] == [
        ("annotations[5].answers", "answers must be a non-empty list of {answer: str}"),
        ("annotations[6]", "duplicate question_id"),
        ("questions[0].question", "empty text: question must be a non-empty string"),
        ("questions[5]", f"question has no annotation in {tmp_path / ANNOTATIONS}"),
    ]
    assert [ex.id for ex in result.examples] == ["101", "102", "103", "104"]
    assert result.examples[0].answers[0] == "a1"  # the first annotation of 101 is kept
    annotations[5]["answers"] = [{"answer": "x"}] * 10
    _write(tmp_path, questions, annotations[:6] + [_annotation(101, image=0)])
    _in_step_only(monkeypatch)
    with pytest.raises(DataError, match="duplicate question_id") as err:
        read_examples("vqa", tmp_path, "val")  # found after the last question, read in step
    assert err.value.field == "annotations[6]"


def test_deep_nesting_is_refused_before_the_parser_builds_it(tmp_path):
    """ijson's memory grows with the square of the depth (100,000 levels: tens of GB); json
    refuses such a file, and so does the stream, at once."""
    deep = "[" * 100_000 + "]" * 100_000
    _write(tmp_path, [_question(1)], [_annotation(1)])
    for relative, key in ((QUESTIONS, "questions"), (ANNOTATIONS, "annotations")):
        path = tmp_path / relative
        good = path.read_text()
        path.write_text(f'{{"{key}": [{{"question_id": 1, "x": {deep}}}]}}')
        with pytest.raises(DataError, match="nested too deeply") as err:
            read_examples("vqa", tmp_path, "val", skip_bad=True)
        assert err.value.file == str(path)
        path.write_text(good)
    path.write_text(f'{{"annotations": [{"[" * 800 + "]" * 800}]}}')  # json's limit is ~1,000
    with pytest.raises(DataError, match="must be an integer"):
        read_examples("vqa", tmp_path, "val")


@pytest.mark.parametrize(
    "text, message, field, line",
    [
        (
            '{"questions": [{"question_id": 1, "question_id": 2}]}',
            "appears twice",
            "question_id",
            None,
        ),
        (
            '{"questions": [{"question_id": 1, "image_id": 1, "question": "Why?"},\n{"oops"',
            "malformed JSON",
            None,
            2,
        ),
        ('[{"question_id": 1}]', "expected an object with a 'questions' list", "questions", None),
        (
            '{"questions": {"question_id": 1}}',
            "expected an object with a 'questions' list",
            "questions",
            None,
        ),
    ],
)
def test_a_bad_questions_file_is_one_error_naming_it(tmp_path, text, message, field, line):
    _write(tmp_path, [], [_annotation(1)])
    (tmp_path / QUESTIONS).write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_examples("vqa", tmp_path, "val", skip_bad=True)
    assert err.value.file == str(tmp_path / QUESTIONS)
    assert (err.value.field, err.value.line) == (field, line)


def test_the_list_streams_items_with_plain_dicts(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"info": {}, "things": [{"a": {"b": [1.5, 2]}}, 3, "x"], "after": 1}')
    items = list(iter_json_list(path, "things"))
    assert items == [{"a": {"b": [1.5, 2]}}, 3, "x"]
    assert type(items[0]["a"]) is dict and type(items[0]["a"]["b"][0]) is float
    path.write_text('{"things": []}')
    assert list(iter_json_list(path, "things")) == []
