"""Shortcut-mitigated (SM) VCR: the rule-based rephrasing of Ye & Kovashka (AAAI 2021).

VCR models learn that the right choice usually names the question's person. The rules rephrase
the choices so that the *wrong* ones name the question's person and the *right* one refers to it
by a pronoun, which keeps every choice's meaning. This module follows their public scripts
`tools/rephrase_choice_singular.py` and `tools/rephrase_choice_plural.py`
(yekeren/VCR-shortcut-effects-study), quirks included (docs/datasets.md lists them):

- **singular** — the question's person tags (over all its tag groups, objects of class "person")
  are exactly one person P. A choice qualifies when it names exactly one person: one distinct
  person tag, or none and one of he/she (any case). A wrong choice: every token equal to the
  choice's tag group `[t]` and every "he"/"she"/"He"/"She" becomes `[P]`. The right choice: every
  token equal to `[t]` becomes he/she ("He"/"She" as the first token), the pronoun chosen by the
  gendered words of the choice, then of the question, "he" on a tie.
- **plural** — the question has exactly one tag group, of two or more persons, G. A choice
  qualifies when it has exactly one tag group and that group is two or more persons (g, sorted),
  or has the token "they"/"They". A wrong choice: tokens equal to g, and "they"/"They", become G.
  The right choice: tokens equal to g become "they" ("They" as the first token).

Tag groups are compared by exact list equality, as in their scripts: `[3, 1]` is not the sorted
group `[1, 3]`, and `[2, 5]` (a person and a car) is not `[2]`. Both the answer and the rationale
choices are rephrased (each with its own label). A record whose question fits neither rule is not
part of the SM split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from madcache.core.errors import ConfigError, DataError
from madcache.data.jsonl import bad_record, iter_json_lines
from madcache.data.records import BadRecord, Example
from madcache.data.vcr import RENDERERS, reference_name, render_tokens, validate_record

PERSON = "person"
SINGULAR, PLURAL = "singular", "plural"
RULES = (SINGULAR, PLURAL)
DEFAULT_PRONOUN = "he"  # their `--default_gender_pronoun`
HE_SHE = ("he", "she", "He", "She")  # what a wrong choice loses (singular)
THEY = ("they", "They")
MASCULINE = frozenset({"he", "his", "him", "He", "His", "Him"})
FEMININE = frozenset({"she", "her", "hers", "She", "Her", "Hers"})
CHOICE_KEYS = (("answer_choices", "answer_label"), ("rationale_choices", "rationale_label"))

Tokens = Sequence[Any]  # VCR tokens: words (str) and tag groups (lists of object indices)


# ----------------------------------------------------------------------------- what a text names


def person_tags(tokens: Tokens, objects: Sequence[str]) -> set[int]:
    """The distinct person indices over every tag group of `tokens`."""
    return {i for token in tokens if isinstance(token, list) for i in token if objects[i] == PERSON}


def he_she(tokens: Tokens) -> set[str]:
    """The distinct singular personal pronouns of `tokens`, lower-cased ("HE" counts too)."""
    return {
        token.lower()
        for token in tokens
        if isinstance(token, str) and token.lower() in ("he", "she")
    }


def only_person_group(tokens: Tokens, objects: Sequence[str]) -> list[int] | None:
    """The sorted tag group when `tokens` have exactly one tag group and it is two or more
    persons; else None."""
    groups = [token for token in tokens if isinstance(token, list)]
    if len(groups) != 1 or len(groups[0]) <= 1 or any(objects[i] != PERSON for i in groups[0]):
        return None
    return sorted(groups[0])


def likely_pronoun(choice: Tokens, question: Tokens, default: str = DEFAULT_PRONOUN) -> str:
    """ "he" or "she": the gender the choice's words point to, the question's on a tie (counted
    together with the choice's), `default` when still tied."""
    count = {"he": 0, "she": 0}

    def add(tokens: Tokens) -> None:
        for token in tokens:
            if isinstance(token, str):
                count["he"] += token in MASCULINE
                count["she"] += token in FEMININE

    add(choice)
    if count["he"] == count["she"]:
        add(question)
    if count["he"] == count["she"]:
        return default
    return "he" if count["he"] > count["she"] else "she"


def _as_pronoun(pronoun: str, position: int) -> str:
    return pronoun[0].upper() + pronoun[1:] if position == 0 else pronoun


def _swap(tokens: Tokens, matches, new) -> list[Any]:
    """`tokens` with every token t for which `matches(t)` replaced by `new(position)`."""
    return [new(i) if matches(token) else token for i, token in enumerate(tokens)]


# ----------------------------------------------------------------------------- the two rules


def rephrase_singular(
    choice: Tokens, *, correct: bool, question: Tokens, person: int, objects: Sequence[str]
) -> list[Any] | None:
    """The singular rule on one choice; None when the choice does not name exactly one person."""
    tags = person_tags(choice, objects)
    if len(tags) + len(he_she(choice)) != 1:
        return None
    group = sorted(tags)  # [t], or [] when the one person is a pronoun (matches no token)
    if correct:
        pronoun = likely_pronoun(choice, question)
        return _swap(choice, lambda t: t == group, lambda i: _as_pronoun(pronoun, i))
    return _swap(choice, lambda t: t == group or t in HE_SHE, lambda i: [person])


def rephrase_plural(
    choice: Tokens, *, correct: bool, group: list[int], objects: Sequence[str]
) -> list[Any] | None:
    """The plural rule on one choice; None when it names no person group and has no "they"."""
    own = only_person_group(choice, objects)
    if own is None and not any(t in THEY for t in choice if isinstance(t, str)):
        return None
    if correct:
        return _swap(choice, lambda t: t == own, lambda i: _as_pronoun("they", i))
    return _swap(choice, lambda t: t == own or t in THEY, lambda i: list(group))


def rule_of(record: Mapping[str, Any]) -> str | None:
    """ "singular", "plural", or None when the question fits neither (not in the SM split).
    A question whose one group repeats one person (`[0, 0]`) fits both; singular wins."""
    question, objects = record["question"], record["objects"]
    if len(person_tags(question, objects)) == 1:
        return SINGULAR
    if only_person_group(question, objects) is not None:
        return PLURAL
    return None


@dataclass(frozen=True)
class Rephrased:
    """The SM version of one record, the rule that made it and how many choices it rephrased."""

    record: dict[str, Any]
    rule: str
    answers: int
    rationales: int


def mitigate_record(record: Mapping[str, Any]) -> Rephrased | None:
    """The SM version of one valid, labelled VCR record (None when it is not in the SM split).

    All keys are kept in their order; only `answer_choices` and `rationale_choices` change. The
    `*_orig` strings of VCR variants describe the original record and are not rewritten.
    """
    rule = rule_of(record)
    if rule is None:
        return None
    question, objects = record["question"], record["objects"]
    if rule == SINGULAR:
        [person] = person_tags(question, objects)

        def rephrase(choice: Tokens, correct: bool) -> list[Any] | None:
            return rephrase_singular(
                choice, correct=correct, question=question, person=person, objects=objects
            )
    else:
        group = only_person_group(question, objects)

        def rephrase(choice: Tokens, correct: bool) -> list[Any] | None:
            return rephrase_plural(choice, correct=correct, group=group, objects=objects)

    new, counts = dict(record), []
    for choices_key, label_key in CHOICE_KEYS:
        changed = [
            rephrase(choice, c == record[label_key]) for c, choice in enumerate(record[choices_key])
        ]
        new[choices_key] = [
            old if ch is None else ch for old, ch in zip(record[choices_key], changed)
        ]
        counts.append(sum(ch is not None for ch in changed))
    return Rephrased(new, rule, *counts)


# ----------------------------------------------------------------------------- files


@dataclass
class RuleCounts:
    records: int = 0
    answer_choices: int = 0  # answer choices rephrased (of 4 per record)
    rationale_choices: int = 0


@dataclass
class SmReport:
    """What `shortcut_mitigate_file` did: `sm_report.json`."""

    source: str
    output: str
    records: int = 0  # valid records read
    written: int = 0  # records in the SM split
    rules: dict[str, RuleCounts] = field(default_factory=lambda: {r: RuleCounts() for r in RULES})
    not_qualifying: list[str] = field(default_factory=list)  # annot_ids left out
    skipped: list[BadRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _labelled(record: Mapping[str, Any], *, file: object, line: int | None) -> None:
    """Validate a VCR record and require both labels (the rules need the right choices)."""
    labels = validate_record(record, file=file, line=line)
    for (_, key), label in zip(CHOICE_KEYS, labels):
        if label is None:
            raise DataError(
                "SM needs the right answer and rationale, but the label is missing "
                "(a test split has none)",
                file=file,
                line=line,
                field=key,
                record_id=record["annot_id"],
            )


def shortcut_mitigate_file(
    source: str | Path, output: str | Path, *, skip_bad: bool = False
) -> SmReport:
    """Write the SM split of the VCR annotation file `source` to `output` (same format): the
    rephrased records whose question fits a rule, in input order. Invalid or unlabelled records
    raise, or under `skip_bad` are left out and listed in the report's `skipped`."""
    source, output = Path(source), Path(output)
    report = SmReport(source=str(source), output=str(output))
    lines: list[str] = []
    for line, record in iter_json_lines(source):
        try:
            if isinstance(record, DataError):
                raise record
            _labelled(record, file=source, line=line)
        except DataError as error:
            if not skip_bad:
                raise
            report.skipped.append(bad_record(error))
            continue
        report.records += 1
        done = mitigate_record(record)
        if done is None:
            report.not_qualifying.append(record["annot_id"])
            continue
        counts = report.rules[done.rule]
        counts.records += 1
        counts.answer_choices += done.answers
        counts.rationale_choices += done.rationales
        lines.append(json.dumps(done.record))
    report.written = len(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return report


# ----------------------------------------------------------------------------- examples


def _infer_renderer(example: Example) -> str:
    """The renderer that produced `example`'s reference words (tag when there are none)."""
    objects = example.raw["objects"]
    texts = ([example.context] if example.context else []) + list(example.choices)
    for word in (w for t in texts for w in t.words if w.boxes):
        for renderer in RENDERERS:
            if word.text == reference_name(word.boxes[0], objects, renderer):
                return renderer
    return "tag"


def shortcut_mitigate(examples: Sequence[Example], *, renderer: str | None = None) -> list[Example]:
    """The SM split of VCR examples: examples of records that fit a rule, rephrased (ids and
    labels unchanged); the others are left out. `:qa` examples get the rephrased answers;
    `:qar` examples the rephrased rationales, after the question + the rephrased right answer.
    The rendering is the one the examples were read with unless `renderer` is given."""
    out = []
    for example in examples:
        if example.dataset != "vcr" or "objects" not in example.raw:
            raise ConfigError(
                f"shortcut mitigation applies to VCR examples read from their "
                f"files; {example.id} is from '{example.dataset}'"
            )
        if example.raw.get("answer_label") is None or example.raw.get("rationale_label") is None:
            raise ConfigError(
                f"shortcut mitigation needs labelled VCR records; {example.id} has "
                "no answer or rationale label (a test split)"
            )
        done = mitigate_record(example.raw)
        if done is None:
            continue
        new, render = done.record, renderer or _infer_renderer(example)
        objects = new["objects"]

        def rendered(key: str) -> tuple:
            return tuple(render_tokens(tokens, objects, render) for tokens in new[key])

        if example.id.endswith(":qar"):
            answer = render_tokens(new["answer_choices"][new["answer_label"]], objects, render)
            question = render_tokens(new["question"], objects, render)
            out.append(
                replace(
                    example,
                    context=question.concat(answer),
                    choices=rendered("rationale_choices"),
                    raw=new,
                )
            )
        else:
            out.append(replace(example, choices=rendered("answer_choices"), raw=new))
    return out
