"""Words for the demo world: articles, numbers, VCR-style token lists, and the caption corpus.

Captions are where the world's knowledge lives: they tie what a person looks like (colour,
shape, size, position) to what it means (mood, job, activity, place, and what follows from
them). The labelled datasets only ask about the meanings.
"""

from __future__ import annotations

import re

import numpy as np

from madcache.demo.world.world import Scene, Thing

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")
_TOKEN = re.compile(r"\{[a-z]+\}|[A-Za-z0-9]+|[^\sA-Za-z0-9]")
_NO_SPACE_BEFORE = {".", ",", "?", "!", "'", ":", ";"}


def a(phrase: str) -> str:
    """`phrase` with its indefinite article: "an angry doctor", "a red circle"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def vcr_tokens(template: str, tags: dict[str, int]) -> list[str | list[int]]:
    """VCR's token list: words and punctuation split apart ("x's" -> "x", "'", "s"), and every
    `{name}` placeholder replaced by the list of 0-based object indices it refers to."""
    tokens: list[str | list[int]] = []
    for token in _TOKEN.findall(template):
        tokens.append([tags[token[1:-1]]] if token.startswith("{") else token)
    return tokens


def vcr_orig(template: str, tags: dict[str, int]) -> str:
    """VCR's untokenised `*_orig` string: object references are 1-based numbers."""
    text = ""
    for token in _TOKEN.findall(template):
        word = str(tags[token[1:-1]] + 1) if token.startswith("{") else token
        glue = not text or token in _NO_SPACE_BEFORE or text.endswith("'")
        text += word if glue else " " + word
    return text


def words_of(sentence: str) -> list[str]:
    return _TOKEN.findall(sentence)


# ---- captions -------------------------------------------------------------------------------


def _who(thing: Thing) -> str:
    return f"{thing.colour.mood} {thing.shape.job}"


PERSON_CAPTIONS = (
    lambda t: f"the {t.look} is {a(_who(t))} {t.activity} {t.region.place}.",
    lambda t: f"{a(t.look)} {t.region.place}: {a(_who(t))}.",
    lambda t: f"{a(_who(t))} {t.activity} {t.region.place}.",
    lambda t: (
        f"the {t.colour.name} one looks {t.colour.mood} and is about to {t.colour.next_action}."
    ),
    lambda t: (
        f"{a(t.colour.name + ' ' + t.shape.name)} who feels {t.colour.mood}; they would "
        f"{t.colour.yelled_reaction} if someone yelled at them."
    ),
    lambda t: f"the {t.shape.name} is {a(t.shape.job)} who came here to {t.shape.purpose}.",
    lambda t: (
        f"{a(t.shape.job)}, drawn as {a(t.shape.name)}, would {t.shape.help_reaction} "
        f"if asked for help."
    ),
    lambda t: f"the {t.size} {t.shape.name} is {t.activity}.",
    lambda t: (
        f"{a(t.look)} {t.region.place} at the {t.region.name}; it just {t.region.before_action}."
    ),
    lambda t: (
        f"{a(_who(t))} who just {t.region.before_action} and will {t.colour.next_action} next."
    ),
)


def scene_caption(scene: Scene) -> str:
    """All objects by their looks; persons with their grid position when the list is short."""
    with_place = len(scene.things) <= 3
    parts = []
    for thing in scene.things:
        part = a(thing.look)
        if with_place and thing.is_person:
            part += f" at the {thing.region.name}"
        parts.append(part)
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return listed + "."


def count_caption(scene: Scene) -> str:
    persons = scene.persons
    shapes: dict[str, int] = {}
    for person in persons:
        shapes[person.shape.name] = shapes.get(person.shape.name, 0) + 1
    counted = [f"{NUMBER_WORDS[n]} {plural(s) if n > 1 else s}" for s, n in shapes.items()]
    people = "one person" if len(persons) == 1 else f"{NUMBER_WORDS[len(persons)]} people"
    return f"{people}: " + ", ".join(counted) + "."


def relation(first: Thing, second: Thing) -> str:
    """The dominant spatial relation of `first` to `second`."""
    (x1, y1), (x2, y2) = first.centre, second.centre
    if abs(x1 - x2) >= abs(y1 - y2):
        return "to the left of" if x1 < x2 else "to the right of"
    return "above" if y1 < y2 else "below"


OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def relation_caption(first: Thing, second: Thing) -> str:
    return f"the {first.short_look} is {relation(first, second)} the {second.short_look}."


def image_captions(scene: Scene, rng: np.random.Generator, count: int) -> list[str]:
    """`count` captions of one image: its object list first, then a mix of captions about one
    person's looks and meanings, counts and spatial relations."""
    captions = [scene_caption(scene)]
    persons = scene.persons
    for _ in range(8 * count):  # bounded: tiny scenes may have fewer distinct captions
        if len(captions) >= count:
            break
        caption = _one_caption(scene, persons, rng)
        if caption not in captions:
            captions.append(caption)
    return captions


def _one_caption(scene: Scene, persons: tuple[Thing, ...], rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.1:
        return count_caption(scene)
    if roll < 0.22 and len(persons) >= 2:
        i, j = rng.choice(len(persons), size=2, replace=False)
        return relation_caption(persons[i], persons[j])
    person = persons[int(rng.integers(len(persons)))]
    return PERSON_CAPTIONS[int(rng.integers(len(PERSON_CAPTIONS)))](person)
