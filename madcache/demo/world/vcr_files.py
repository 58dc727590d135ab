"""The demo world's VCR split files: `vcr/{split}.jsonl` + `vcr/vcr1images/<movie>/*.jpg|json`.

Every question asks for the *meaning* of one person's looks (their mood, job, activity, place,
...); every correct answer follows from the image by the world's mapping, and every distractor
uses a value no person in the image has. The correct answer repeats the question's person tag
while distractors (usually) name other persons: the overlap shortcut that SM removes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from madcache.demo.world import world
from madcache.demo.world.render import render_scene
from madcache.demo.world.text import a, vcr_orig, vcr_tokens
from madcache.demo.world.world import (
    COLOURS,
    IMAGE_SIZE,
    REGIONS,
    SHAPES,
    SIZES,
    VCR_SCENES,
    Scene,
    Thing,
    sample_scene,
)

# Question categories and their share of VCR questions (Zellers et al. 2019, MAD.md).
CATEGORY_SHARES = {
    "explanation": 0.38,
    "activity": 0.24,
    "temporal": 0.13,
    "mental": 0.08,
    "role": 0.07,
    "scene": 0.05,
    "hypothetical": 0.05,
}
QUESTIONS_PER_IMAGE = (3, 2, 4, 3)  # cycled, so an image count follows from a question count
# Each distractor names another person with this probability (else the question's person, as
# the correct answer always does). Picking the answer that overlaps the question most then
# scores about 54% (chance: 25%) before SM and about 0% after it.
OTHER_PERSON_RATE = 0.6
MOVIES_PER_SPLIT = 4
MOVIE_BASE = {"train": 9001, "val": 9101, "test": 9201}
LABEL_KEYS = (
    "answer_orig",
    "question_orig",
    "rationale_orig",
    "answer_match_iter",
    "answer_sources",
    "answer_label",
    "rationale_sources",
    "rationale_match_iter",
    "rationale_label",
)


@dataclass(frozen=True)
class Attribute:
    """A visible attribute: the key of a person, every possible key, and a key's value text."""

    key: Callable[[Thing], object]
    keys: tuple[object, ...]


COLOUR = Attribute(lambda t: t.colour, COLOURS)
SHAPE = Attribute(lambda t: t.shape, SHAPES)
REGION = Attribute(lambda t: t.region, REGIONS)


@dataclass(frozen=True)
class Kind:
    """One question template. Its answer is `answer` filled with `value(key, size)` of the asked
    person, its rationale `evidence` filled with `clue(key, size)` (what the image shows); `key`
    is the person's `attribute` (colour, shape or region), the one the answer depends on."""

    category: str
    question: str
    answer: str
    value: Callable[[object, str], str]
    attribute: Attribute
    evidence: str
    clue: Callable[[object, str], str]


def _colour_kind(category: str, question: str, answer: str, value: Callable[[object], str]) -> Kind:
    return Kind(
        category,
        question,
        answer,
        lambda c, _: value(c),
        COLOUR,
        "{x} is colored {v} .",
        lambda c, _: c.name,
    )


def _shape_kind(category: str, question: str, answer: str, value: Callable[[object], str]) -> Kind:
    return Kind(
        category,
        question,
        answer,
        lambda s, _: value(s),
        SHAPE,
        "{x} is shaped like {v} .",
        lambda s, _: a(s.name),
    )


def _region_kind(category: str, question: str, answer: str, value: Callable[[object], str]) -> Kind:
    return Kind(
        category,
        question,
        answer,
        lambda r, _: value(r),
        REGION,
        "{x} is at the {v} of the picture .",
        lambda r, _: r.name,
    )


def _activity_kind(question: str, answer: str) -> Kind:
    """Activity depends on shape *and* size, and so does its evidence."""
    return Kind(
        "activity",
        question,
        answer,
        lambda s, size: s.large_activity if size == "large" else s.small_activity,
        SHAPE,
        "{x} is {v} .",
        lambda s, size: a(f"{size} {s.name}"),
    )


KINDS = (
    _shape_kind("explanation", "Why is {x} here ?", "{x} came here to {v} .", lambda s: s.purpose),
    _colour_kind(
        "explanation", "Why is {x} acting this way ?", "Because {x} feels {v} .", lambda c: c.mood
    ),
    _shape_kind(
        "explanation",
        "Why is {x} wearing that outfit ?",
        "Because {x} works as {v} .",
        lambda s: a(s.job),
    ),
    _activity_kind("What is {x} doing ?", "{x} is {v} ."),
    _activity_kind("What is {x} doing right now ?", "{x} is busy {v} ."),
    _colour_kind("temporal", "What will {x} do next ?", "{x} will {v} .", lambda c: c.next_action),
    _region_kind(
        "temporal", "What did {x} do before this ?", "{x} {v} .", lambda r: r.before_action
    ),
    _colour_kind("mental", "How does {x} feel ?", "{x} feels {v} .", lambda c: c.mood),
    _colour_kind("mental", "What is {x} feeling ?", "{x} is feeling {v} .", lambda c: c.mood),
    _shape_kind("role", "What is {x}'s job ?", "{x} is {v} .", lambda s: a(s.job)),
    _shape_kind("role", "Who is {x} ?", "{x} is the {v} here .", lambda s: s.job),
    _region_kind("scene", "Where is {x} ?", "{x} is {v} .", lambda r: r.place),
    _region_kind("scene", "Where is {x} standing ?", "{x} is standing {v} .", lambda r: r.place),
    _colour_kind(
        "hypothetical",
        "What would {x} do if someone yelled at them ?",
        "{x} would {v} .",
        lambda c: c.yelled_reaction,
    ),
    _shape_kind(
        "hypothetical",
        "What would {x} do if asked for help ?",
        "{x} would {v} .",
        lambda s: s.help_reaction,
    ),
)


def category_plan(n_questions: int, rng: np.random.Generator) -> list[str]:
    """Categories for `n_questions` in VCR's proportions (largest remainder, every category at
    least once), shuffled."""
    shares = CATEGORY_SHARES
    counts = {c: max(1, int(p * n_questions)) for c, p in shares.items()}
    by_remainder = sorted(shares, key=lambda c: -(shares[c] * n_questions % 1))
    i = 0
    while sum(counts.values()) < n_questions:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > n_questions:  # tiny n: take from the largest
        counts[max(counts, key=counts.get)] -= 1
    plan = [c for c, n in counts.items() for _ in range(n)]
    return [plan[i] for i in rng.permutation(len(plan))]


def images_for(n_questions: int) -> int:
    """How many images `n_questions` VCR questions need (QUESTIONS_PER_IMAGE, cycled)."""
    return world.images_for(n_questions, QUESTIONS_PER_IMAGE)


def _choice_set(
    kind: Kind, scene: Scene, person: Thing, rng: np.random.Generator
) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(answers, rationales), correct first: each a (template, tags) pair."""
    persons = scene.persons
    x = scene.index(person)
    present = {kind.attribute.key(p) for p in persons}
    absent = [k for k in kind.attribute.keys if k not in present]
    others = [scene.index(p) for p in persons if p is not person]

    def fill(template: str, value: str, tag: int) -> tuple[str, dict]:
        return template.replace("{v}", value), {"x": tag}

    def distractor_tag() -> int:
        if rng.random() < OTHER_PERSON_RATE:
            return others[int(rng.integers(len(others)))]
        return x

    wrong_keys = [absent[i] for i in rng.permutation(len(absent))[:3]]
    wrong_sizes = [SIZES[int(i)] for i in rng.integers(2, size=len(wrong_keys))]
    key = kind.attribute.key(person)
    answer_values = [kind.value(key, person.size)]
    answer_values += [kind.value(k, size) for k, size in zip(wrong_keys, wrong_sizes)]
    clue_values = [kind.clue(key, person.size)]
    clue_values += [kind.clue(k, size) for k, size in zip(wrong_keys, wrong_sizes)]
    answers = [fill(kind.answer, answer_values[0], x)]
    answers += [fill(kind.answer, v, distractor_tag()) for v in answer_values[1:]]
    rationales = [fill(kind.evidence, clue_values[0], x)]
    rationales += [fill(kind.evidence, v, distractor_tag()) for v in clue_values[1:]]
    return answers, rationales


def _order(
    rng: np.random.Generator, match_index: int, n_in_split: int
) -> tuple[int, list[int], list[int]]:
    """A label position, VCR's match_iter (0 = gold) and sources (gold = match_index)."""
    label = int(rng.integers(4))
    iters = [int(v) for v in rng.permutation(3) + 1]
    iters.insert(label, 0)
    sources = [int(v) for v in rng.integers(0, max(n_in_split, 2), size=4)]
    sources = [s if s != match_index else (s + 1) % max(n_in_split, 2) for s in sources]
    sources[label] = match_index
    return label, iters, sources


def _record(
    kind: Kind,
    scene: Scene,
    person: Thing,
    image: dict,
    question_number: int,
    split: str,
    match_index: int,
    n_in_split: int,
    rng: np.random.Generator,
) -> dict:
    x = scene.index(person)
    answers, rationales = _choice_set(kind, scene, person, rng)
    a_label, a_iter, a_sources = _order(rng, match_index, n_in_split)
    r_label, r_iter, r_sources = _order(rng, match_index, n_in_split)
    answers = _placed(answers, a_label)
    rationales = _placed(rationales, r_label)
    record = {
        "movie": image["movie"],
        "objects": [t.kind for t in scene.things],
        "interesting_scores": [
            int(v) for v in rng.choice([-1, 0, 1], p=[0.1, 0.6, 0.3], size=int(rng.integers(1, 4)))
        ],
        "answer_likelihood": str(rng.choice(["unlikely", "possible", "likely"], p=[0.1, 0.4, 0.5])),
        "img_fn": image["img_fn"],
        "metadata_fn": image["metadata_fn"],
        "answer_orig": vcr_orig(*answers[a_label]),
        "question_orig": vcr_orig(kind.question, {"x": x}),
        "rationale_orig": vcr_orig(*rationales[r_label]),
        "question": vcr_tokens(kind.question, {"x": x}),
        "answer_match_iter": a_iter,
        "answer_sources": a_sources,
        "answer_choices": [vcr_tokens(*choice) for choice in answers],
        "answer_label": a_label,
        "rationale_choices": [vcr_tokens(*choice) for choice in rationales],
        "rationale_sources": r_sources,
        "rationale_match_iter": r_iter,
        "rationale_label": r_label,
        "img_id": image["img_id"],
        "question_number": question_number,
        "annot_id": f"{split}-{match_index}",
        "match_fold": f"{split}-0",
        "match_index": match_index,
    }
    if split == "test":  # VCR's test file has the labels (and what reveals them) removed
        record = {k: v for k, v in record.items() if k not in LABEL_KEYS}
    return record


def _placed(choices: list, label: int) -> list:
    """`choices` (correct first) with the correct one moved to position `label`."""
    wrong = choices[1:]
    return wrong[:label] + [choices[0]] + wrong[label:]


def _metadata(scene: Scene, rng: np.random.Generator) -> dict:
    return {
        "boxes": [
            [float(v) for v in t.box] + [round(float(rng.uniform(0.9, 0.9999)), 6)]
            for t in scene.things
        ],
        "segms": [[[list(p) for p in t.polygon]] for t in scene.things],
        "names": [t.kind for t in scene.things],
        "width": IMAGE_SIZE,
        "height": IMAGE_SIZE,
    }


def _image_names(split: str, index: int) -> dict:
    movie_no = MOVIE_BASE[split] + index % MOVIES_PER_SPLIT
    movie = f"{movie_no}_DEMO_WORLD_{index % MOVIES_PER_SPLIT + 1}"
    start = 5 * (index // MOVIES_PER_SPLIT)
    stem = f"{movie}_{_clock(start)}-{_clock(start + 3)}@0"
    folder = f"lsmdc_{movie}"
    return {
        "movie": movie,
        "img_fn": f"{folder}/{stem}.jpg",
        "metadata_fn": f"{folder}/{stem}.json",
        "img_id": f"{split}-{index}",
    }


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}.{seconds // 60 % 60:02d}.{seconds % 60:02d}.000"


def write_vcr_split(
    root: Path, split: str, n_questions: int, rng: np.random.Generator, tick: Callable[[], None]
) -> dict:
    """Write `root/vcr/{split}.jsonl` and its images + metadata; returns counts."""
    out = root / "vcr"
    categories = category_plan(n_questions, rng)
    kinds_by_category = {c: [k for k in KINDS if k.category == c] for c in CATEGORY_SHARES}
    lines, n_images = [], images_for(n_questions)
    for image_index in range(n_images):
        scene = sample_scene(rng, VCR_SCENES)
        image = _image_names(split, image_index)
        jpg = out / "vcr1images" / image["img_fn"]
        jpg.parent.mkdir(parents=True, exist_ok=True)
        jpg.write_bytes(render_scene(scene, rng))
        (out / "vcr1images" / image["metadata_fn"]).write_text(
            json.dumps(_metadata(scene, rng)), encoding="utf-8"
        )
        per_image = QUESTIONS_PER_IMAGE[image_index % len(QUESTIONS_PER_IMAGE)]
        for asked in range(min(per_image, n_questions - len(lines))):
            options = kinds_by_category[categories[len(lines)]]
            kind = options[int(rng.integers(len(options)))]
            person = scene.persons[int(rng.integers(len(scene.persons)))]
            lines.append(
                json.dumps(
                    _record(kind, scene, person, image, asked, split, len(lines), n_questions, rng)
                )
            )
        tick()
    (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"questions": len(lines), "images": n_images}
