"""The demo world's VQA v2 files: questions + annotations json per subtype, COCO-named images,
and `answers.txt`, a plain answer vocabulary.

Questions come from templates of several official question types; some ask what is visible
(colour, shape, count, position, size), some what it means (job, activity, mood). Each
question gets ten annotator answers with realistic disagreement (near colours, off-by-one
counts, synonyms, flipped yes/no).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from madcache.demo.world import world
from madcache.demo.world.render import render_scene
from madcache.demo.world.text import NUMBER_WORDS, plural
from madcache.demo.world.world import COLOURS, OPEN_SCENES, SHAPES, Scene, Thing, sample_scene

SUBTYPES = {"train": "train2014", "val": "val2014"}
IMAGE_ID_BASE = {"train": 100_000, "val": 500_000}
QUESTIONS_PER_IMAGE = (3, 2, 3, 2)  # cycled
INFO = {
    "description": "madcache demo world: synthetic questions in the VQA v2.0 format.",
    "url": "",
    "version": "2.0",
    "year": 2024,
    "contributor": "madcache",
    "date_created": "2024-01-01 00:00:00",
}
LICENSE = {"url": "http://www.apache.org/licenses/LICENSE-2.0", "name": "Apache License 2.0"}

# what an annotator who misreads the image answers instead
NEAR_COLOURS = {
    "red": ("orange", "pink"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("blue", "yellow"),
    "blue": ("purple", "black"),
    "purple": ("blue", "pink"),
    "pink": ("red", "purple"),
    "black": ("blue", "purple"),
}
SYNONYMS = {
    "middle": ("center",),
    "police officer": ("police", "cop"),
    "ring": ("circle",),
    "cross": ("plus",),
    "diamond": ("square",),
    "square": ("box",),
    "musician": ("drummer",),
    "chef": ("cook",),
    "doctor": ("nurse",),
    "happy": ("smiling",),
    "sad": ("upset",),
    "angry": ("mad",),
    "scared": ("afraid",),
    "calm": ("relaxed",),
    "shy": ("nervous",),
    "proud": ("confident",),
    "excited": ("happy",),
}
ACTIVITY_WORD = {
    activity: activity.split()[0]
    for s in SHAPES
    for activity in (s.large_activity, s.small_activity)
}
COLUMN_ANSWER = {"left": "left", "center": "middle", "right": "right"}


@dataclass(frozen=True)
class Asked:
    question: str
    question_type: str  # the longest official prefix (mscoco_question_types.txt)
    answer_type: str  # "yes/no" | "number" | "other"
    answer: str


def _target(scene: Scene, rng: np.random.Generator) -> Thing:
    return scene.persons[int(rng.integers(len(scene.persons)))]


def _colour_of(scene: Scene, rng: np.random.Generator) -> Asked | None:
    unique = [
        p
        for p in scene.persons
        if sum(q.shape == p.shape and q.size == p.size for q in scene.persons) == 1
    ]
    if not unique:
        return None
    p = unique[int(rng.integers(len(unique)))]
    return Asked(
        f"What color is the {p.size} {p.shape.name}?", "what color is the", "other", p.colour.name
    )


def _count_shape(scene: Scene, rng: np.random.Generator) -> Asked:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    n = sum(p.shape == shape for p in scene.persons)
    return Asked(f"How many {plural(shape.name)} are there?", "how many", "number", str(n))


def _count_people(scene: Scene, rng: np.random.Generator) -> Asked:
    return Asked(
        "How many people are in the picture?",
        "how many people are in",
        "number",
        str(len(scene.persons)),
    )


def _is_there(scene: Scene, rng: np.random.Generator) -> Asked:
    if rng.random() < 0.5:
        p = _target(scene, rng)
        colour, shape, answer = p.colour, p.shape, "yes"
    else:
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        answer = (
            "yes" if any(p.colour == colour and p.shape == shape for p in scene.persons) else "no"
        )
    return Asked(f"Is there a {colour.name} {shape.name}?", "is there a", "yes/no", answer)


def _shape_of(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(f"What shape is the {p.colour.name} object?", "what", "other", p.shape.name)


def _where(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(
        f"Where is the {p.short_look}?", "where is the", "other", COLUMN_ANSWER[p.region.col]
    )


def _is_large(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(
        f"Is the {p.short_look} large?", "is the", "yes/no", "yes" if p.size == "large" else "no"
    )


def _job(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(f"What is the {p.short_look}'s job?", "what is the", "other", p.shape.job)


def _who(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(f"Who is the {p.short_look}?", "who is", "other", p.shape.job)


def _doing(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(
        f"What is the {p.short_look} doing?", "what is the", "other", ACTIVITY_WORD[p.activity]
    )


def _feel(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(f"How does the {p.short_look} feel?", "how", "other", p.colour.mood)


def _why_here(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(f"Why is the {p.short_look} here?", "why is the", "other", f"to {p.shape.purpose}")


def _looks_mood(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    colour = p.colour if rng.random() < 0.5 else COLOURS[int(rng.integers(len(COLOURS)))]
    return Asked(
        f"Does the {p.short_look} look {colour.mood}?",
        "does the",
        "yes/no",
        "yes" if colour == p.colour else "no",
    )


def _which_colour(scene: Scene, rng: np.random.Generator) -> Asked:
    p = _target(scene, rng)
    return Asked(f"Which shape is {p.colour.name}?", "which", "other", p.shape.name)


def _any_colour(scene: Scene, rng: np.random.Generator) -> Asked:
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    answer = "yes" if any(p.colour == colour for p in scene.persons) else "no"
    return Asked(f"Are there any {colour.name} shapes?", "are there any", "yes/no", answer)


TEMPLATES: tuple[Callable[[Scene, np.random.Generator], Asked | None], ...] = (
    _colour_of,
    _count_shape,
    _count_people,
    _is_there,
    _shape_of,
    _where,
    _is_large,
    _job,
    _who,
    _doing,
    _feel,
    _why_here,
    _looks_mood,
    _which_colour,
    _any_colour,
)


def _ask(scene: Scene, rng: np.random.Generator, asked: set[str]) -> Asked:
    while True:
        made = TEMPLATES[int(rng.integers(len(TEMPLATES)))](scene, rng)
        if made is not None and made.question not in asked:
            return made


def _wrong_answer(asked: Asked, rng: np.random.Generator) -> str:
    """What a careless or confused annotator says instead of `asked.answer`."""
    answer = asked.answer
    if asked.answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if asked.answer_type == "number":
        n = int(answer) + (1 if rng.random() < 0.5 or answer == "0" else -1)
        return NUMBER_WORDS[n] if rng.random() < 0.2 and n < len(NUMBER_WORDS) else str(n)
    options = NEAR_COLOURS.get(answer, ()) + SYNONYMS.get(answer, ())
    return options[int(rng.integers(len(options)))] if options else answer


def _answers(asked: Asked, rng: np.random.Generator) -> list[dict]:
    """Ten annotators: most agree; 0-4 (rarely more) say something near."""
    n_wrong = int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.35, 0.25, 0.18, 0.12, 0.07, 0.03]))
    wrong_at = set(int(i) for i in rng.permutation(10)[:n_wrong])
    answers = []
    for i in range(10):
        wrong = i in wrong_at
        answer = _wrong_answer(asked, rng) if wrong else asked.answer
        confidence = rng.choice(
            ["yes", "maybe", "no"], p=[0.3, 0.5, 0.2] if wrong else [0.86, 0.12, 0.02]
        )
        answers.append({"answer": answer, "answer_confidence": str(confidence), "answer_id": i + 1})
    return answers


def _annotation(asked: Asked, image_id: int, question_id: int, rng: np.random.Generator) -> dict:
    answers = _answers(asked, rng)
    return {
        "question_type": asked.question_type,
        "multiple_choice_answer": Counter(a["answer"] for a in answers).most_common(1)[0][0],
        "answers": answers,
        "image_id": image_id,
        "answer_type": asked.answer_type,
        "question_id": question_id,
    }


def images_for(n_questions: int) -> int:
    """How many images `n_questions` VQA questions need (QUESTIONS_PER_IMAGE, cycled)."""
    return world.images_for(n_questions, QUESTIONS_PER_IMAGE)


def write_vqa_split(
    root: Path, split: str, n_questions: int, rng: np.random.Generator, tick: Callable[[], None]
) -> dict:
    """Write one subtype's questions/annotations json and images; returns counts and the set
    of answers used (for `answers.txt`)."""
    subtype = SUBTYPES[split]
    out = root / "vqa"
    (out / subtype).mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for index in range(images_for(n_questions)):
        scene = sample_scene(rng, OPEN_SCENES)
        image_id = IMAGE_ID_BASE[split] + 3 * index
        (out / subtype / f"COCO_{subtype}_{image_id:012d}.jpg").write_bytes(
            render_scene(scene, rng)
        )
        per_image = QUESTIONS_PER_IMAGE[index % len(QUESTIONS_PER_IMAGE)]
        seen: set[str] = set()
        for k in range(min(per_image, n_questions - len(questions))):
            asked = _ask(scene, rng, seen)
            seen.add(asked.question)
            question_id = image_id * 1000 + k
            questions.append(
                {"image_id": image_id, "question": asked.question, "question_id": question_id}
            )
            annotations.append(_annotation(asked, image_id, question_id, rng))
        tick()
    _write_json(
        out / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
        {
            "info": INFO,
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "license": LICENSE,
            "data_subtype": subtype,
            "questions": questions,
        },
    )
    _write_json(
        out / f"v2_mscoco_{subtype}_annotations.json",
        {"info": INFO, "license": LICENSE, "data_subtype": subtype, "annotations": annotations},
    )
    used = {a["answer"] for ann in annotations for a in ann["answers"]}
    return {"questions": len(questions), "images": images_for(n_questions), "answers": used}


def possible_answers() -> set[str]:
    """Every answer a template can give, seen or not."""
    values = {"yes", "no"} | {str(n) for n in range(6)}
    values |= {c.name for c in COLOURS} | {c.mood for c in COLOURS}
    values |= {s.name for s in SHAPES} | {s.job for s in SHAPES}
    values |= set(ACTIVITY_WORD.values()) | set(COLUMN_ANSWER.values())
    values |= {f"to {s.purpose}" for s in SHAPES}
    return values


def write_answer_vocabulary(root: Path, answers: set[str]) -> int:
    vocabulary = sorted(answers | possible_answers())
    (root / "vqa" / "answers.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return len(vocabulary)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload), encoding="utf-8")
