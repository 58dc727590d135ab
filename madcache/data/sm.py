"""Shortcut-mitigated (SM) VCR: the rule-based transform of Ye & Kovashka (2021).

VCR models learn that the right answer usually mentions the question's person. The transform
removes that shortcut in the answers (rationales and labels are untouched):

- the correct answer's references to the question's persons are moved to other persons of the
  image (not in the question);
- the incorrect answers' person references are moved onto the question's persons.

With one question person P ("singular" rule) this is: P -> another person in the correct answer,
every person -> P in the incorrect ones. With several ("plural" rule) the j-th question person met
in the correct answer goes to the j-th free person, and the j-th distinct non-question person of
an incorrect answer goes to question person j (cyclically). Only indices whose object is "person"
count. Records it cannot change are kept as they are, and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from madcache.data.jsonl import bad_record, iter_json_lines
from madcache.data.records import BadRecord, Example
from madcache.data.vcr import RENDERERS, reference_name, render_tokens, validate_record
from madcache.core.errors import ConfigError, DataError

PERSON = "person"
NO_QUESTION_PERSON = "no person tag in the question"
NOTHING_TO_CHANGE = "no answer mentions a person that the rules would move"


def person_indices(tokens: Sequence[Any], objects: Sequence[str]) -> list[int]:
    """Person indices referenced in `tokens`, unique, in order of first appearance."""
    found: list[int] = []
    for token in tokens:
        if isinstance(token, list):
            found += [i for i in token if objects[i] == PERSON and i not in found]
    return found


def _remap(tokens: Sequence[Any], mapping: Mapping[int, int]) -> list[Any]:
    """Tokens with references remapped; a reference list never names one object twice."""
    out: list[Any] = []
    for token in tokens:
        if isinstance(token, list):
            out.append(list(dict.fromkeys(mapping.get(i, i) for i in token)))
        else:
            out.append(token)
    return out


def _correct_mapping(answer: Sequence[Any], question_persons: list[int], others: list[int],
                     objects: Sequence[str]) -> dict[int, int]:
    mentioned = person_indices(answer, objects)
    free = [o for o in others if o not in mentioned] + [o for o in others if o in mentioned]
    moved = [p for p in mentioned if p in question_persons]
    return dict(zip(moved, free))


def _incorrect_mapping(answer: Sequence[Any], question_persons: list[int],
                       objects: Sequence[str]) -> dict[int, int]:
    strangers = [p for p in person_indices(answer, objects) if p not in question_persons]
    return {p: question_persons[j % len(question_persons)] for j, p in enumerate(strangers)}


def mitigate_record(record: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The SM version of one (valid) VCR record, and why it is unchanged (None if changed).

    All keys are kept; only `answer_choices` changes. The `*_orig` strings describe the original
    record and are not rewritten.
    """
    objects = record["objects"]
    question_persons = person_indices(record["question"], objects)
    if not question_persons:
        return dict(record), NO_QUESTION_PERSON
    others = [i for i, name in enumerate(objects) if name == PERSON and i not in question_persons]
    label = record.get("answer_label")
    choices = []
    for c, answer in enumerate(record["answer_choices"]):
        mapping = _correct_mapping(answer, question_persons, others, objects) if c == label \
            else _incorrect_mapping(answer, question_persons, objects)
        choices.append(_remap(answer, mapping))
    if choices == record["answer_choices"]:
        return dict(record), NOTHING_TO_CHANGE
    return {**record, "answer_choices": choices}, None


def rule_of(record: Mapping[str, Any]) -> str:
    """"singular" (one question person), "plural" (several) or "none"."""
    count = len(person_indices(record["question"], record["objects"]))
    return "none" if count == 0 else "singular" if count == 1 else "plural"


# ----------------------------------------------------------------------------- files

@dataclass
class SmReport:
    source: str
    output: str
    records: int = 0
    changed: int = 0
    unchanged: int = 0
    rules: dict[str, int] = field(default_factory=dict)
    changed_ids: list[str] = field(default_factory=list)
    unchanged_ids: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[BadRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def shortcut_mitigate_file(source: str | Path, output: str | Path, *, skip_bad: bool = False
                           ) -> SmReport:
    """Write the SM version of the VCR annotation file `source` to `output` (same format, one
    line per input record, in order). Invalid records raise, or under `skip_bad` are left out
    and listed in the report's `skipped`."""
    source, output = Path(source), Path(output)
    report = SmReport(source=str(source), output=str(output))
    rules: Counter[str] = Counter()
    lines: list[str] = []
    for line, record in iter_json_lines(source):
        try:
            if isinstance(record, DataError):
                raise record
            validate_record(record, file=source, line=line)
        except DataError as error:
            if not skip_bad:
                raise
            report.skipped.append(bad_record(error))
            continue
        new, reason = mitigate_record(record)
        rules[rule_of(record)] += 1
        report.records += 1
        if reason is None:
            report.changed += 1
            report.changed_ids.append(record["annot_id"])
        else:
            report.unchanged += 1
            report.unchanged_ids.setdefault(reason, []).append(record["annot_id"])
        lines.append(json.dumps(new))
    report.rules = dict(sorted(rules.items()))
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


def shortcut_mitigate(examples: Sequence[Example], *, renderer: str | None = None
                      ) -> list[Example]:
    """SM versions of VCR examples (ids, labels, rationales unchanged). The rendering is the
    one the examples were read with unless `renderer` is given."""
    out = []
    for example in examples:
        if example.dataset != "vcr" or "objects" not in example.raw:
            raise ConfigError(f"shortcut mitigation applies to VCR examples read from their "
                              f"files; {example.id} is from '{example.dataset}'")
        new, reason = mitigate_record(example.raw)
        if reason is not None:
            out.append(example)
            continue
        render = renderer or _infer_renderer(example)
        objects = new["objects"]
        answers = tuple(render_tokens(t, objects, render) for t in new["answer_choices"])
        if example.id.endswith(":qar"):
            question = render_tokens(new["question"], objects, render)
            out.append(replace(example, context=question.concat(answers[new["answer_label"]]),
                               raw=new))
        else:
            out.append(replace(example, choices=answers, raw=new))
    return out
