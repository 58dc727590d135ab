"""What a joint-space model (CLIP) scores for an example, and how: the prompt texts of each
dataset's teacher-logit protocol and the scaled cosine (MAD.md, "Teacher logits").

One implementation for both users: extraction's teacher logits (`extraction/protocols.py`, the
numbers `madcache zeroshot` reports) and the `clip-finetune` student, which scores with the same
texts and the same cosine so that at step 0 it equals the zero-shot numbers
(`students/clip_finetune.py`).

- VCR: `iqa` = question + choice (`example.texts`), `ia` = the choice alone;
- SNLI-VE: the hypothesis; the classes by distance to the split's k-means centres, sorted high ->
  low = `SNLI_VE_ORDER`;
- VQA: each candidate answer turned into a statement with the question (`TEMPLATES`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from madcache.data.records import Example, Text

LOGIT_SCALE = 100.0
VCR_PROTOCOLS = ("iqa", "ia")
SNLI_VE_ORDER = ("entailment", "neutral", "contradiction")


def cosine_logits(
    image_emb: torch.Tensor, text_embs: torch.Tensor, scale: float = LOGIT_SCALE
) -> torch.Tensor:
    """`scale * cos(image, text_c)`: image [D] / [B, D], texts [C, D] / [B, C, D] -> [C] / [B, C]."""
    image = torch.nn.functional.normalize(image_emb.float(), dim=-1).unsqueeze(-2)
    texts = torch.nn.functional.normalize(text_embs.float(), dim=-1)
    return scale * (image * texts).sum(-1)


def vcr_texts(example: Example, protocol: str) -> tuple[Text, ...]:
    """The texts a teacher encodes for one VCR example: `iqa` = context + choice, `ia` = choice."""
    if protocol == "iqa":
        return example.texts
    if protocol == "ia":
        return example.choices
    raise ValueError(f"unknown VCR protocol {protocol!r}; use one of {VCR_PROTOCOLS}")


YES = {"yes", "yeah", "yep", "true"}

StatementFn = Callable[[re.Match, str], str]


def _yes(answer: str) -> bool:
    return answer.strip().lower() in YES


def _exist(m: re.Match, a: str) -> str:
    verb, rest = m["verb"], m["rest"]
    return (
        f"there {verb} {re.sub(r'^any ', '', rest)}"
        if _yes(a)
        else f"there {verb} no {_drop_article(rest)}"
    )


def _this_is(m: re.Match, a: str) -> str:
    return f"{m['subj']} is {m['rest']}" if _yes(a) else f"{m['subj']} is not {m['rest']}"


def _drop_article(phrase: str) -> str:
    return re.sub(r"^(a|an|any|the)\s+", "", phrase)


# (name, pattern on the lower-cased question without "?", statement from match + answer).
# First match wins; no match -> "question answer".
TEMPLATES: tuple[tuple[str, re.Pattern, StatementFn], ...] = tuple(
    (name, re.compile(pattern), fn)
    for name, pattern, fn in [
        (
            "color",
            r"^what colou?r (?P<verb>is|are) (?P<subj>.+)$",
            lambda m, a: f"{m['subj']} {m['verb']} {a}",
        ),
        (
            "count",
            r"^how many (?P<subj>.+?)(?: (?:are|is) (?:there|in|on|shown|visible).*"
            r"| do you see.*| can you see.*)?$",
            lambda m, a: f"there are {a} {m['subj']}",
        ),
        ("exist", r"^(?P<verb>is|are) there (?P<rest>.+)$", _exist),
        ("this-is", r"^is (?P<subj>this|that|it) (?P<rest>.+)$", _this_is),
        ("doing", r"^what (?:is|are) (?P<subj>.+?) doing$", lambda m, a: f"{m['subj']} is {a}"),
        (
            "kind",
            r"^what (?:kind|type|sort) of (?P<what>.+?) (?:is|are) (?P<rest>.+)$",
            lambda m, a: f"{m['rest']} is a {a} {m['what']}",
        ),
        (
            "what-is-this",
            r"^what (?:is|are) (?P<subj>this|that|these|those|it)$",
            lambda m, a: f"{m['subj']} is {a}",
        ),
        ("where", r"^where (?:is|are) (?P<subj>.+)$", lambda m, a: f"{m['subj']} is in {a}"),
    ]
)


def question_to_statement(question: str, answer: str) -> str:
    """A declarative statement for (question, candidate answer) by the first matching template
    in `TEMPLATES`, e.g. ("What color is the bus?", "red") -> "the bus is red"; a question no
    template matches becomes "question answer"."""
    q = " ".join(question.strip().lower().rstrip("?").split())
    a = " ".join(answer.strip().split())
    for _, pattern, fn in TEMPLATES:
        m = pattern.match(q)
        if m:
            return fn(m, a)
    return f"{question.strip()} {a}"


def vqa_question(example: Example) -> str:
    """The question a VQA example asks (its one choice)."""
    return example.choices[0].text


def statement_texts(question: str, answers: Sequence[str]) -> list[Text]:
    """One statement `Text` per candidate answer (`question_to_statement`)."""
    return [Text.from_string(question_to_statement(question, answer)) for answer in answers]
