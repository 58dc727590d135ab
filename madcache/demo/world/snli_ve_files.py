"""The demo world's SNLI-VE files: `snli-ve/snli_ve_{split}.jsonl` + `flickr30k_images/<id>.jpg`.

Premise images get hypotheses about the persons in them: entailments state what is visible or
follows from the world's mapping ("An angry doctor is at the window."), contradictions use
values nobody in the image has or reversed relations, and neutral ones attach facts an image
cannot show to a person who is there ("The angry doctor has two children.").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from madcache.demo.world.render import render_scene
from madcache.demo.world.text import (
    NUMBER_WORDS,
    OPPOSITE,
    a,
    capitalised,
    image_captions,
    relation,
    words_of,
)
from madcache.demo.world.world import COLOURS, SHAPES, Scene, SceneSpec, sample_scene

LABELS = ("entailment", "neutral", "contradiction")
SNLI_SCENES = SceneSpec(min_persons=1, max_persons=3, max_props=2)
ID_BASE = {"train": 4_000_000_000, "dev": 4_100_000_000, "test": 4_200_000_000}
ANNOTATORS = {"train": 1, "dev": 5, "test": 5}  # as in SNLI: 5 validation labels off train
ANNOTATOR_NOISE = 0.12
UNSEEABLE = (
    "has two children",
    "is waiting for a friend",
    "just came back from a holiday",
    "is fifty years old",
    "was born in a small town",
    "has a pet cat at home",
    "is saving money for a car",
    "is named Alex",
)


def _entailment(scene: Scene, rng: np.random.Generator) -> str:
    person = _pick(scene.persons, rng)
    options: list[Callable[[], str]] = [
        lambda: f"There is {a(person.look)}.",
        lambda: (
            f"{capitalised(a(person.colour.mood + ' ' + person.shape.job))} is "
            f"{person.region.place}."
        ),
        lambda: f"Someone is {person.activity}.",
        lambda: f"{capitalised(a(person.shape.job))} is in the picture.",
        lambda: _count_sentence(len(scene.persons)),
    ]
    if len(scene.persons) >= 2:
        other = _pick([p for p in scene.persons if p is not person], rng)
        options.append(
            lambda: f"The {person.short_look} is {relation(person, other)} the {other.short_look}."
        )
    return _pick(options, rng)()


def _contradiction(scene: Scene, rng: np.random.Generator) -> str:
    person = _pick(scene.persons, rng)
    colour = _pick([c for c in COLOURS if c not in {p.colour for p in scene.persons}], rng)
    shape = _pick([s for s in SHAPES if s not in {p.shape for p in scene.persons}], rng)
    options: list[Callable[[], str]] = [
        lambda: f"There is {a(colour.name + ' ' + person.shape.name)}.",
        lambda: f"{capitalised(a(colour.mood + ' ' + person.shape.job))} is {person.region.place}.",
        lambda: f"{capitalised(a(shape.job))} is in the picture.",
        lambda: f"Nobody is {person.activity}.",
        lambda: _count_sentence(len(scene.persons) + 1),
    ]
    if len(scene.persons) >= 2:
        other = _pick([p for p in scene.persons if p is not person], rng)
        options.append(
            lambda: (
                f"The {person.short_look} is "
                f"{OPPOSITE[relation(person, other)]} the {other.short_look}."
            )
        )
    return _pick(options, rng)()


def _neutral(scene: Scene, rng: np.random.Generator) -> str:
    person = _pick(scene.persons, rng)
    fact = _pick(UNSEEABLE, rng)
    who = _pick(
        [person.short_look, person.colour.mood + " " + person.shape.job, person.shape.job], rng
    )
    return f"The {who} {fact}."


def _count_sentence(n: int) -> str:
    return "There is one person." if n == 1 else f"There are {NUMBER_WORDS[n]} people."


def _pick(options, rng: np.random.Generator):
    return options[int(rng.integers(len(options)))]


def _parses(sentence: str) -> tuple[str, str]:
    """Flat stand-ins for SNLI's binary and Penn parses (same words, no real syntax)."""
    words = words_of(sentence)
    return "( " + " ".join(words) + " )", "(ROOT (S " + " ".join(f"(X {w})" for w in words) + "))"


def _annotator_labels(label: str, split: str, rng: np.random.Generator) -> list[str]:
    """The intended label, with up to two annotators (of five) disagreeing."""
    labels = [label] * ANNOTATORS[split]
    if len(labels) == 5:
        for i in rng.permutation(5)[:2]:
            if rng.random() < ANNOTATOR_NOISE:
                labels[i] = _pick([x for x in LABELS if x != label], rng)
    return labels


def _pair(
    image_id: str,
    caption_no: int,
    caption: str,
    hypothesis: str,
    label: str,
    split: str,
    rng: np.random.Generator,
) -> dict:
    labels = _annotator_labels(label, split, rng)
    caption = capitalised(caption)
    s1_binary, s1_parse = _parses(caption)
    s2_binary, s2_parse = _parses(hypothesis)
    record = {
        "Flickr30K_ID": image_id,
        "annotator_labels": labels,
        "captionID": f"{image_id}.jpg#{caption_no}",
        "gold_label": max(LABELS, key=labels.count),
        "pairID": f"{image_id}.jpg#{caption_no}r1{label[0]}",
        "sentence1": caption,
        "sentence1_binary_parse": s1_binary,
        "sentence1_parse": s1_parse,
        "sentence2": hypothesis,
        "sentence2_binary_parse": s2_binary,
        "sentence2_parse": s2_parse,
    }
    return dict(sorted(record.items()))


HYPOTHESES = {"entailment": _entailment, "neutral": _neutral, "contradiction": _contradiction}


def write_snli_ve_split(
    root: Path, split: str, n_images: int, rng: np.random.Generator, tick: Callable[[], None]
) -> dict:
    """Write `root/snli-ve/snli_ve_{split}.jsonl` (one premise caption and its three hypotheses
    per image) and the images; returns counts."""
    out = root / "snli-ve"
    (out / "flickr30k_images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_images):
        scene = sample_scene(rng, SNLI_SCENES)
        image_id = str(ID_BASE[split] + 7 * index)
        (out / "flickr30k_images" / f"{image_id}.jpg").write_bytes(render_scene(scene, rng))
        caption_no = int(rng.integers(5))
        caption = image_captions(scene, rng, 2)[1]
        for label in LABELS:
            hypothesis = HYPOTHESES[label](scene, rng)
            lines.append(
                json.dumps(_pair(image_id, caption_no, caption, hypothesis, label, split, rng))
            )
        tick()
    (out / f"snli_ve_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"pairs": len(lines), "images": n_images}
