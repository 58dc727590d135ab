"""A VQA answer vocabulary that extraction builds (no vocabulary file) counts the train split's
answers only, whichever split is extracted."""

import shutil

import pytest

from madcache.core.errors import ConfigError
from madcache.data import read_examples
from madcache.data.vqa import build_answer_vocab, normalize_answer
from madcache.extraction import ExtractConfig
from madcache.extraction.run import _answer_vocab


def _root_without_vocabulary(demo_root, tmp_path):
    root = tmp_path / "vqa"
    shutil.copytree(demo_root / "vqa", root, ignore=shutil.ignore_patterns("*.jpg"))
    (root / "answers.txt").unlink()
    return root


def test_a_built_vocabulary_of_the_val_split_counts_train_answers(demo_root, tmp_path):
    root = _root_without_vocabulary(demo_root, tmp_path)
    config = ExtractConfig(
        dataset="vqa",
        root=root,
        split="val",
        teacher="tiny",
        out=tmp_path / "cache",
        answer_vocab_size=1000,
    )
    val = read_examples("vqa", root, "val").examples
    train = read_examples("vqa", root, "train").examples
    vocab, source = _answer_vocab(config, val)
    assert vocab == build_answer_vocab(train, 1000) and "train split" in source
    held_out_only = {normalize_answer(a) for ex in val for a in ex.answers} - set(vocab)
    assert held_out_only  # the small world's val has answers its train split never gives


def test_without_a_train_split_the_vocabulary_file_is_asked_for(demo_root, tmp_path):
    root = _root_without_vocabulary(demo_root, tmp_path)
    for name in root.glob("*train2014*.json"):
        name.unlink()
    config = ExtractConfig(
        dataset="vqa", root=root, split="val", teacher="tiny", out=tmp_path / "cache"
    )
    with pytest.raises(ConfigError, match="--answer-vocab"):
        _answer_vocab(config, read_examples("vqa", root, "val").examples)
