"""pool_token_spans by hand, and the student's own token spans against the text."""

from __future__ import annotations

import torch

from madcache.students.tokens import pool_token_spans


def test_pool_token_spans_by_hand():
    # "Why is person1 smiling?"  WordPiece: [CLS] why is person ##1 smiling ? [SEP]
    spans = torch.tensor(
        [[[-1, -1], [0, 3], [4, 6], [7, 13], [13, 14], [15, 22], [22, 23], [-1, -1]]]
    )
    tokens = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1).repeat(1, 1, 2)
    tokens[..., 1] *= 10
    words = torch.tensor([[[7, 14], [15, 22], [0, 3], [30, 35]]])  # person1, smiling, Why, none
    mask = torch.tensor([[True, True, True, True]])
    pooled, kept = pool_token_spans(tokens, spans, words, mask)
    assert pooled.shape == (1, 4, 2)
    assert torch.equal(pooled[0, 0], torch.tensor([3.5, 35.0]))  # mean of tokens 3 and 4
    assert torch.equal(pooled[0, 1], torch.tensor([5.0, 50.0]))
    assert torch.equal(pooled[0, 2], torch.tensor([1.0, 10.0]))
    assert torch.equal(pooled[0, 3], torch.zeros(2))  # no token overlaps
    assert kept.tolist() == [[True, True, True, False]]


def test_pool_token_spans_masked_words_and_leading_dims():
    spans = torch.tensor([[0, 4], [5, 9], [-1, -1]]).expand(2, 3, 3, 2)
    tokens = torch.randn(2, 3, 3, 4)
    words = torch.tensor([[0, 9], [2, 6]]).expand(2, 3, 2, 2)  # partial overlaps count
    mask = torch.tensor([True, False]).expand(2, 3, 2)
    pooled, kept = pool_token_spans(tokens, spans, words, mask)
    assert pooled.shape == (2, 3, 2, 4)
    assert torch.allclose(pooled[..., 0, :], tokens[..., :2, :].mean(dim=-2))
    assert torch.equal(pooled[..., 1, :], torch.zeros(2, 3, 4))
    assert kept[..., 0].all() and not kept[..., 1].any()


def test_student_token_spans_point_at_their_characters(student, make):
    example = make.vcr(0)
    inputs = student.prepare([example], make.regions((3,)))
    tokens = student.tokenizer.convert_ids_to_tokens(inputs["input_ids"][1].tolist())
    spans = inputs["token_spans"][1].tolist()
    text = example.texts[1].text  # "What is person1 holding? the blue circle on the left"
    pieces = [(tok, text[s:e]) for tok, (s, e) in zip(tokens, spans) if s >= 0]
    assert [t for t, _ in pieces][:5] == ["what", "is", "person", "##1", "holding"]
    assert all(tok.removeprefix("##") == chars.lower() for tok, chars in pieces)
    assert "".join(chars for _, chars in pieces) == text.replace(" ", "")
    special = [s for tok, s in zip(tokens, spans) if tok in ("[CLS]", "[SEP]", "[PAD]")]
    assert special and all(s == [-1, -1] for s in special)
