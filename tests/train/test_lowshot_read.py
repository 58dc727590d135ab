"""The low-shot path of `setup` reads the training split in two passes (a slim index for the
sampler, then the drawn examples) instead of keeping it: same subset, same split, same refusals."""

import json

import pytest

from madcache.core.errors import ConfigError, DataError
from madcache.data import iter_examples, read_examples
from madcache.train.config import TrainConfig
from madcache.train.setup import training_subset

QUESTIONS = [
    "Why is [0] here ?",
    "What is [0] doing ?",
    "What will [0] do next ?",
    "Where is [0] ?",
    "How does [0] feel ?",
    "What is [0] 's job ?",
]


def _record(i: int) -> dict:
    question = [[0] if w == "[0]" else w for w in QUESTIONS[i % len(QUESTIONS)].split()]
    choices = [["a", str(c), "."] for c in range(4)]
    return {
        "annot_id": f"train-{i}",
        "img_id": f"img-{i // 3}",
        "objects": ["person"],
        "img_fn": f"m/{i // 3}.jpg",
        "metadata_fn": f"m/{i // 3}.json",
        "question": question,
        "answer_choices": choices,
        "rationale_choices": choices,
        "answer_label": i % 4,
        "rationale_label": (i + 1) % 4,
    }


def _root(tmp_path, records):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def _config(root, **overrides):
    return TrainConfig(
        **{
            "dataset": "vcr",
            "root": str(root),
            "out": str(root / "run"),
            "method": "md",
            "seed": 5,
            **overrides,
        }
    )


def _stream(root):
    return lambda only=None: iter_examples("vcr", root, "train", only=only)


def test_two_pass_subset_and_split_equal_the_whole_read(tmp_path):
    root = _root(tmp_path, [_record(i) for i in range(60)])
    config = _config(root, per_category=3)
    whole = read_examples("vcr", root, "train").examples
    subset, split = training_subset(config, whole)
    streamed, streamed_split = training_subset(config, _stream(root))
    assert [ex.id for ex in streamed] == [ex.id for ex in subset] == split.ids
    assert streamed == subset and streamed_split == split
    assert len(subset) < len(whole) and set(split.counts) == {ex.category for ex in whole}

    path = split.save(tmp_path / "split.json")
    from_file, _ = training_subset(_config(root, split_file=str(path)), _stream(root))
    assert from_file == subset
    only = list(iter_examples("vcr", root, "train", only={"train-7:qar", "train-9:qa"}))
    assert [ex.id for ex in only] == ["train-7:qar", "train-9:qa"]


def test_two_pass_read_keeps_every_refusal(tmp_path):
    root = _root(tmp_path, [_record(i) for i in range(6)] + [_record(2)])
    with pytest.raises(DataError, match="identical copy of line 3") as err:
        training_subset(_config(root, per_category=1), _stream(root))
    assert (err.value.line, err.value.field) == (7, "annot_id")
    other = _root(tmp_path, [_record(i) for i in range(6)])
    path = tmp_path / "split.json"
    _, split = training_subset(_config(other, per_category=1), _stream(other))
    split.ids.append("train-99:qa")
    split.example_counts["role"] = split.example_counts.get("role", 0) + 1
    split.save(path)
    with pytest.raises(ConfigError, match="1 of its .* ids are not in the vcr train split"):
        training_subset(_config(other, split_file=str(path)), _stream(other))
    bad = _root(tmp_path, [_record(i) for i in range(6)] + [{**_record(6), "objects": []}])
    split.ids.pop()
    split.example_counts["role"] -= 1
    split.save(path)  # a split file's run still checks every record
    with pytest.raises(DataError, match="object index 0 is out of range") as err:
        training_subset(_config(bad, split_file=str(path)), _stream(bad))
    assert err.value.line == 7
