"""VQA v2 reader (Goyal et al. 2017), the official answer normalisation and accuracy, and
answer-vocabulary files.

One example per question: `choices = (question,)`, `label = None`; `answers` are the 10 human
answers as the annotation file has them (the official evaluator needs them unprocessed), and the
training targets `answer_scores` are the soft scores of the normalised answers (0/.3/.6/.9/1 for
0/1/2/3/>=4 votes).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.core.io import json_problem
from madcache.data.base import StreamingReader, reader_options
from madcache.data.categories import vqa_category
from madcache.data.jsonl import bad_record, iter_json_list, load_json_file
from madcache.data.paths import safe_join
from madcache.data.records import BadRecord, Example, Text

SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}
UNLABELLED_SUBTYPES = ("test2015", "test-dev2015")
FILE_DIRS = (".", "questions", "annotations")
HUMANS = 10  # human answers per VQA v2 question
DEFAULT_OPTIONS: dict[str, Any] = {
    "questions_file": None,
    "annotations_file": None,
    "images_dir": None,
    "check_files": False,
}

# ----------------------------------------------------------------------------- normalisation
# The official evaluator's tables (GT-Vision-Lab/VQA, vqaEval.py), kept as they are.

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# The official regexes, quirks included: "(?!<=\d)" is a lookahead, not a lookbehind.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# vqaEval.py calls `periodStrip.sub("", text, re.UNICODE)`: the flag lands in `count`, so at most
# re.UNICODE == 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The evaluator's processPunctuation: drop or space out punctuation, strip periods."""
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The evaluator's processDigitArticle: lower case, number words -> digits, no articles,
    contractions fixed."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean_prediction(answer: str) -> str:
    """The evaluator's first step on a predicted answer: newlines and tabs -> spaces, stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """An answer with every processing step of the evaluator applied (the form of training
    targets and answer vocabularies; the official metric itself is `vqa_accuracy`)."""
    return process_digit_article(process_punctuation(clean_prediction(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one predicted answer exactly as vqaEval.py (GT-Vision-Lab/VQA) computes it.

    - the prediction: newlines/tabs -> spaces, stripped, processPunctuation, processDigitArticle;
    - the human `answers` (unprocessed, as in the annotation file): processPunctuation only, and
      only when they are not all identical (so "Two" from ten agreeing humans never matches a
      prediction, which is lower-cased to "2");
    - the mean over the leave-one-out sets (each human answer left out in turn; the others keep
      their duplicates) of min(1, matches among the others / 3).
    """
    if not answers:
        return 0.0
    target = normalize_answer(prediction)
    humans = list(answers)
    if len(set(humans)) > 1:
        humans = [process_punctuation(a) for a in humans]
    matches = sum(a == target for a in humans)
    return sum(min(1.0, (matches - (a == target)) / 3) for a in humans) / len(humans)


def soft_score(count: int) -> float:
    """Training target for an answer given by `count` humans: 0/.3/.6/.9/1 for 0/1/2/3/>=4."""
    return min(1.0, round(0.3 * count, 1))


def answer_scores(answers: Sequence[str]) -> dict[str, float]:
    """Soft score per distinct normalised answer (`normalize_answer`)."""
    counts = Counter(normalize_answer(a) for a in answers)
    return {answer: soft_score(count) for answer, count in counts.items()}


def read_vqa_results(path: str | Path) -> dict[str, str]:
    """A results file in the official format (visualqa.org/evaluation: a JSON list of
    `{"question_id": int, "answer": str}`) -> {question id as a string: answer}. Checked as the
    official loader checks it (a list of objects), plus unique integer ids."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"VQA results file not found: {path}", file=path)
    data = load_json_file(path)
    if not isinstance(data, list):
        raise DataError("results must be a JSON list of {question_id, answer} objects", file=path)
    found: dict[str, str] = {}
    for position, record in enumerate(data):
        where = {"file": path, "field": f"[{position}]"}
        question_id = _int_field(record, "question_id", where)
        if not isinstance(record.get("answer"), str):
            raise DataError("answer must be a string", file=path, field=f"[{position}].answer")
        if str(question_id) in found:
            raise DataError("duplicate question_id", **where, record_id=str(question_id))
        found[str(question_id)] = record["answer"]
    return found


# ----------------------------------------------------------------------------- vocabularies


def load_answer_vocab(path: str | Path) -> list[str]:
    """Answers by label id from LXMERT `label2ans` (a list) / `ans2label` (a dict), MCAN
    `answer_dict.json` (`[ans_to_ix, ix_to_ans]`), or plain text (one per line, e.g. mmf's with
    "<unk>" first). Entries are kept as they are (LXMERT's label 0 is "")."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"answer vocabulary not found: {path}", file=path)
    if path.suffix != ".json":
        return _unique(_text_lines(path), path)
    data = load_json_file(path)
    if isinstance(data, list) and len(data) == 2 and all(isinstance(d, dict) for d in data):
        return _by_index({answer: int(i) for i, answer in data[1].items()}, path, "[1]")
    if isinstance(data, dict):
        return _by_index(data, path, None)
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return _unique(data, path)
    raise DataError(
        "unknown answer vocabulary format: expected a list of answers, an "
        "{answer: id} dict or [ans_to_ix, ix_to_ans]",
        file=path,
    )


def _text_lines(path: Path) -> list[str]:
    """The lines of a plain-text vocabulary, any newline convention (a final newline ends the
    last line, it starts no empty one); bytes that are not UTF-8 are a DataError naming the file
    and line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{json_problem(exc)}; save the answer vocabulary as UTF-8, one answer per line",
            file=path,
            line=raw[: exc.start].count(b"\n") + 1,
        ) from None
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


IGNORED_ANSWERS = {"", "<unk>"}


def read_answer_vocab(path: str | Path) -> list[str]:
    """A vocabulary file's answers (see `load_answer_vocab` for the formats)
    without the empty and `<unk>` entries, which are never candidates. Candidate ids index this
    list, which the manifest stores as `extra.answer_vocab`."""
    vocab = [a.strip() for a in load_answer_vocab(path) if a.strip() not in IGNORED_ANSWERS]
    if not vocab:
        raise ConfigError(f"answer vocabulary {path} holds no answers")
    return list(dict.fromkeys(vocab))


def build_answer_vocab(examples: list[Example], size: int) -> list[str]:
    """The `size` most frequent normalised annotated answers of the split (ties: alphabetical)."""
    counts = Counter(
        normalize_answer(a)
        for ex in examples
        for a in ex.answers
        if a.strip() not in IGNORED_ANSWERS
    )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    vocab = [answer for answer, _ in ranked[:size]]
    if not vocab:
        raise ConfigError(
            "no answer vocabulary: the split has no annotated answers; pass --answer-vocab FILE"
        )
    return vocab


def _by_index(answer_to_id: Mapping[str, Any], path: Path, field: str | None) -> list[str]:
    ids = sorted(answer_to_id.values())
    if ids != list(range(len(ids))):
        raise DataError("answer ids must be 0..n-1 without gaps or repeats", file=path, field=field)
    return _unique(sorted(answer_to_id, key=answer_to_id.__getitem__), path)


def _unique(answers: list[str], path: Path) -> list[str]:
    answers = [a.rstrip("\r") for a in answers]
    repeated = [a for a, n in Counter(answers).items() if n > 1]
    if repeated:
        raise DataError(f"answers repeated: {repeated[:5]}", file=path)
    return answers


# ----------------------------------------------------------------------------- reader


def subtype_of(split: str) -> str:
    if split in SUBTYPES:
        return SUBTYPES[split]
    if split in SUBTYPES.values():
        return split
    raise ConfigError(f"unknown VQA split {split!r}: use one of {', '.join(SUBTYPES)}")


def _find(root: Path, given: str | None, name: str, what: str) -> Path:
    if given is not None:
        path = safe_join(root, given, field=f"{what}_file")
        if not path.is_file():
            raise DataFileNotFoundError(f"{what} file not found: {path}", file=path)
        return path
    for directory in FILE_DIRS:
        path = root / directory / name
        if path.is_file():
            return path
    raise DataFileNotFoundError(
        f"{name} not found in {root} or its questions/, annotations/ "
        f"folders; pass --option {what}_file=PATH",
        file=root / name,
    )


def default_images_dir(root: Path, subtype: str) -> str:
    return next(
        d for d in (subtype, f"images/{subtype}", "images", ".") if (Path(root) / d).is_dir()
    )


def _int_field(record: Any, key: str, where: dict[str, Any]) -> int:
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(
            f"{key} must be an integer, got {value!r}",
            **{**where, "field": f"{where['field']}.{key}"},
        )
    return value


Annotation = tuple[int, tuple[str, ...]]  # an annotation's image_id and human answers as written


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _annotation(record: Any, where: dict[str, Any]) -> tuple[int, Annotation]:
    """One annotation record's question_id and `Annotation`, checked."""
    question_id = _int_field(record, "question_id", where)
    image_id = _int_field(record, "image_id", where)
    answers = record.get("answers")
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)
    ):
        raise DataError(
            "answers must be a non-empty list of {answer: str}",
            **{**where, "field": where["field"] + ".answers"},
            record_id=str(question_id),
        )
    if len(answers) != HUMANS:
        raise DataError(
            f"{len(answers)} answers; VQA v2 annotations hold {HUMANS} human answers each (the "
            "accuracy averages over its 10 leave-one-out subsets)",
            **{**where, "field": where["field"] + ".answers"},
            record_id=str(question_id),
        )
    return question_id, (image_id, tuple(a["answer"] for a in answers))


class _Annotations:
    """An annotations file read alongside its questions file, one annotation per question.

    While both files list the same question ids in the same order (the official files do), the
    two are read in step and only the current record is in memory. The first time they differ
    (or an annotation is bad) the annotations are read once more, whole, into
    {question_id: Annotation}: the compact fields only, never the parsed records. Every
    annotation is checked either way, and `check_rest` checks the rest before a question's
    error is raised, so an annotation's error comes first, as when the file was read first."""

    def __init__(self, path: Path, skip_bad: bool) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.skipped: list[BadRecord] = []
        self._stream = iter_json_list(path, "annotations", plain=False)
        self._records = enumerate(self._stream)
        self._ids: set[int] = set()  # the question ids of the annotations read in step
        self._keyed: dict[int, Annotation] | None = None

    def next_for(self, question_id: Any) -> Annotation | None:
        """The annotation of the next question, whose id is `question_id` (None: it has none)."""
        if self._keyed is None:
            found = self._in_step(question_id)
            if found is not None:
                return found
            self._stream.close()
            self._keyed = self._read_keyed()
        return self._keyed.get(question_id) if _is_int(question_id) else None

    def check_rest(self) -> None:
        """Check the annotations not read yet (reading in step stops at the last question)."""
        if self._keyed is None:
            for question_id, _ in self._checked(self._records, self._ids):
                self._ids.add(question_id)
            self._keyed = {}

    def _in_step(self, question_id: Any) -> Annotation | None:
        """The next annotation if it is good and belongs to `question_id`, else None."""
        position, record = next(self._records, (None, None))
        if position is None or not _is_int(question_id):
            return None
        try:
            annotated, found = _annotation(record, self._where(position))
        except DataError:
            return None
        if annotated != question_id or annotated in self._ids:
            return None
        self._ids.add(question_id)  # the int the questions' `seen` holds too: stored once
        return found

    def _read_keyed(self) -> dict[int, Annotation]:
        keyed: dict[int, Annotation] = {}
        records = enumerate(iter_json_list(self.path, "annotations", plain=False))
        for question_id, (image_id, answers) in self._checked(records, keyed):
            keyed[question_id] = (image_id, tuple(sys.intern(a) for a in answers))
        return keyed

    def _checked(
        self, records: Iterator[tuple[int, Any]], ids: Collection[int]
    ) -> Iterator[tuple[int, Annotation]]:
        """Each good annotation's question_id and `Annotation`; a bad one, or one whose
        question_id is in `ids` (the caller adds those it keeps), raises or, under `skip_bad`,
        goes to `skipped`."""
        for position, record in records:
            where = self._where(position)
            try:
                question_id, found = _annotation(record, where)
                if question_id in ids:
                    raise DataError("duplicate question_id", **where, record_id=str(question_id))
            except DataError as error:
                if not self.skip_bad:
                    raise
                self.skipped.append(bad_record(error))
                continue
            yield question_id, found

    def _where(self, position: int) -> dict[str, Any]:
        return {"file": self.path, "line": None, "field": f"annotations[{position}]"}


def _questions(path: Path, annotations: _Annotations | None) -> Iterator[Any]:
    """The question records; an error in the questions file comes after the annotations'."""
    try:
        yield from iter_json_list(path, "questions")
    except DataError:
        _check_all(annotations)
        raise


def _check_all(annotations: _Annotations | None) -> None:
    if annotations is not None:
        annotations.check_rest()


class VqaReader(StreamingReader):
    """The reader of VQA v2. Options: `questions_file`, `annotations_file`, `images_dir`,
    `check_files`."""

    def files(self, root: Path, split: str, **options: Any) -> tuple[Path, Path | None]:
        subtype = subtype_of(split)
        questions = _find(
            Path(root),
            options.get("questions_file"),
            f"v2_OpenEnded_mscoco_{subtype}_questions.json",
            "questions",
        )
        if subtype in UNLABELLED_SUBTYPES and options.get("annotations_file") is None:
            return questions, None
        annotations = _find(
            Path(root),
            options.get("annotations_file"),
            f"v2_mscoco_{subtype}_annotations.json",
            "annotations",
        )
        return questions, annotations

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        return [p for p in self.files(root, split, **options) if p is not None]

    def resolve_options(self, **options: Any) -> dict[str, Any]:
        """Every option with its default filled in and its value normalised (what a cache
        fingerprint records)."""
        return reader_options("vqa", options, DEFAULT_OPTIONS)

    def iter_examples(
        self,
        root: Path,
        split: str,
        *,
        skip_bad: bool = False,
        skipped: list[BadRecord] | None = None,
        only: Collection[str] | None = None,
        **options: Any,
    ) -> Iterator[Example]:
        """`read`'s examples one question at a time, with the same refusals (records skipped
        under `skip_bad` go to `skipped`: the annotations' first, then the questions', as when
        the annotations were read first). Both JSON files are parsed incrementally and joined
        by question id (`_Annotations`), so memory holds the ids seen, not the files. `only`:
        build just the examples with these ids and pass over the other questions unchecked (a
        second read, after a whole one checked them)."""
        opts = self.resolve_options(**options)
        root = Path(root)
        subtype = subtype_of(split)
        questions_path, annotations_path = self.files(root, split, **opts)
        images_dir = opts["images_dir"] or default_images_dir(root, subtype)
        check_files = opts["check_files"]
        skipped = [] if skipped is None else skipped
        annotations = None if annotations_path is None else _Annotations(annotations_path, skip_bad)
        bad_questions: list[BadRecord] = []
        seen: set[int] = set()
        try:
            for position, record in enumerate(_questions(questions_path, annotations)):
                question_id = record.get("question_id") if isinstance(record, dict) else None
                annotation = None if annotations is None else annotations.next_for(question_id)
                if (
                    only is not None
                    and isinstance(question_id, int)
                    and str(question_id) not in only
                ):
                    continue
                where = {"file": questions_path, "line": None, "field": f"questions[{position}]"}
                try:
                    example = self._example(
                        record,
                        where,
                        annotation,
                        annotations_path,
                        root,
                        split,
                        subtype,
                        images_dir,
                        check_files,
                        seen,
                    )
                except DataError as error:
                    if not skip_bad:
                        _check_all(annotations)
                        raise
                    bad_questions.append(bad_record(error))
                    continue
                yield example
            _check_all(annotations)
        finally:
            skipped.extend(annotations.skipped if annotations is not None else [])
            skipped.extend(bad_questions)

    @staticmethod
    def _example(
        record: Any,
        where: dict[str, Any],
        annotation: Annotation | None,
        annotations_path: Path | None,
        root: Path,
        split: str,
        subtype: str,
        images_dir: str,
        check_files: bool,
        seen: set[int],
    ) -> Example:
        question_id = _int_field(record, "question_id", where)
        image_id = _int_field(record, "image_id", where)
        ident = {**where, "record_id": str(question_id)}
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                "empty text: question must be a non-empty string",
                **{**ident, "field": where["field"] + ".question"},
            )
        if question_id in seen:
            raise DataError("duplicate question_id", **ident)
        seen.add(question_id)
        human: tuple[str, ...] = ()
        if annotations_path is not None:
            if annotation is None:
                raise DataError(f"question has no annotation in {annotations_path}", **ident)
            annotated_image, human = annotation
            if annotated_image != image_id:
                raise DataError(
                    f"image_id {image_id} differs from the annotation's {annotated_image}", **ident
                )
        name = f"COCO_{subtype}_{image_id:012d}.jpg"
        relative = name if images_dir == "." else f"{images_dir}/{name}"
        full = safe_join(root, relative, field="images_dir")
        if check_files and not full.is_file():
            raise DataFileNotFoundError(
                f"image {full} does not exist; check --root and the images_dir option", **ident
            )
        text = Text.from_string(question)
        return Example(
            id=str(question_id),
            dataset="vqa",
            split=split,
            image_id=str(image_id),
            image_path=relative,
            choices=(text,),
            label=None,
            label_free_text=text,
            category=vqa_category(question),
            answers=human,
            answer_scores=answer_scores(human) if human else None,
            raw=record,
        )
