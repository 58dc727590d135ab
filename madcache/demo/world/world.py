"""The demo world: what exists in it and what each visible attribute *means*.

Every person is a coloured shape. What it looks like decides who it is, deterministically:
colour -> mood (and what the person does next, how they react when yelled at), shape -> job
(and why they are here, how they help), shape + size -> activity, position -> place (and what
they did just before). Captions state these links; the labelled questions ask about the
meanings. See docs/demo-world.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 96
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Colour:
    name: str
    rgb: tuple[int, int, int]
    mood: str
    next_action: str  # base form: "[x] will <next_action>"
    yelled_reaction: str  # base form: "[x] would <yelled_reaction> if someone yelled at them"


@dataclass(frozen=True)
class Shape:
    name: str
    job: str
    purpose: str  # base form: "[x] came here to <purpose>"
    help_reaction: str  # base form: "[x] would <help_reaction> if asked for help"
    large_activity: str  # gerund phrase
    small_activity: str


@dataclass(frozen=True)
class Region:
    """One cell of a 2 x 3 grid; a person's centre lies in it."""

    row: str  # "top" | "bottom"
    col: str  # "left" | "center" | "right"
    place: str  # "at the window"
    before_action: str  # past tense: "[x] <before_action> just before this"

    @property
    def name(self) -> str:
        return f"{self.row} {self.col}"


COLOURS = (
    Colour("red", (205, 35, 35), "angry", "start a fight", "shout back"),
    Colour("orange", (240, 135, 25), "excited", "jump up and cheer", "laugh out loud"),
    Colour("yellow", (235, 205, 30), "happy", "start dancing", "just smile"),
    Colour("green", (40, 150, 55), "calm", "sit down to rest", "stay perfectly still"),
    Colour("blue", (35, 75, 205), "sad", "leave the room", "start crying"),
    Colour("purple", (125, 45, 170), "proud", "give a speech", "walk away proudly"),
    Colour("pink", (240, 120, 185), "shy", "hide behind a friend", "blush and look down"),
    Colour("black", (25, 25, 25), "scared", "run away", "freeze in fear"),
)

SHAPES = (
    Shape(
        "circle",
        "doctor",
        "see a patient",
        "treat the wound",
        "treating a patient",
        "reading a chart",
    ),
    Shape(
        "square",
        "police officer",
        "keep everyone safe",
        "call for backup",
        "directing traffic",
        "writing a ticket",
    ),
    Shape(
        "triangle", "chef", "cook dinner", "make some soup", "cooking a meal", "tasting the sauce"
    ),
    Shape(
        "diamond",
        "teacher",
        "give a lesson",
        "explain the problem",
        "teaching a class",
        "grading papers",
    ),
    Shape(
        "cross",
        "farmer",
        "sell vegetables",
        "fix the fence",
        "driving a tractor",
        "feeding the chickens",
    ),
    Shape(
        "ring", "musician", "play a concert", "sing a song", "playing the drums", "tuning a guitar"
    ),
)

REGIONS = (
    Region("top", "left", "at the window", "opened the curtains"),
    Region("top", "center", "on the stage", "climbed the steps"),
    Region("top", "right", "on the balcony", "stepped outside for air"),
    Region("bottom", "left", "at the door", "rang the bell"),
    Region("bottom", "center", "at the table", "pulled up a chair"),
    Region("bottom", "right", "in the garden", "watered the flowers"),
)

SIZES = ("small", "large")
SIZE_PIXELS = {"small": (14, 19), "large": (26, 33)}  # side length range, inclusive
PROP_CLASSES = ("cup", "book", "bag", "dog")
PROP_PIXELS = (10, 14)
PROP_GREY = (120, 120, 120)
CELL_MARGIN = 4

COLOUR_BY_NAME = {c.name: c for c in COLOURS}
SHAPE_BY_NAME = {s.name: s for s in SHAPES}


@dataclass(frozen=True)
class Thing:
    """One object of a scene: a person (coloured shape) or a grey prop.

    `box` is [x1, y1, x2, y2] in pixels; `polygon` its outline (integer [x, y] points), used
    both to draw it and as its VCR segmentation.
    """

    kind: str  # "person" or a prop class
    colour: Colour | None
    shape: Shape | None
    size: str
    box: tuple[float, float, float, float]
    polygon: tuple[tuple[int, int], ...]

    @property
    def is_person(self) -> bool:
        return self.kind == "person"

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def region(self) -> Region:
        x, y = self.centre
        row = "top" if y < IMAGE_SIZE / 2 else "bottom"
        col = ("left", "center", "right")[min(2, int(3 * x / IMAGE_SIZE))]
        return next(r for r in REGIONS if r.row == row and r.col == col)

    @property
    def activity(self) -> str:
        assert self.shape is not None
        return self.shape.large_activity if self.size == "large" else self.shape.small_activity

    @property
    def look(self) -> str:
        """Its visual description: "large red circle" (or "grey cup")."""
        if not self.is_person:
            return f"grey {self.kind}"
        return f"{self.size} {self.colour.name} {self.shape.name}"

    @property
    def short_look(self) -> str:
        """Unique inside a scene (person colours are distinct): "red circle"."""
        return f"{self.colour.name} {self.shape.name}" if self.is_person else f"grey {self.kind}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: tuple[int, int, int]

    @property
    def persons(self) -> tuple[Thing, ...]:
        return tuple(t for t in self.things if t.is_person)

    def index(self, thing: Thing) -> int:
        return self.things.index(thing)


@dataclass(frozen=True)
class SceneSpec:
    """How to sample scenes. `distinct` makes person shapes and regions unique per scene, so every
    attribute value a question needs is told apart and distractors can use absent values."""

    min_persons: int
    max_persons: int
    max_props: int
    max_things: int = 5
    distinct: bool = True


VCR_SCENES = SceneSpec(min_persons=2, max_persons=3, max_props=2)
OPEN_SCENES = SceneSpec(min_persons=1, max_persons=5, max_props=2, distinct=False)


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> tuple[tuple[int, int], ...]:
    """The outline of a shape of width `side` centred on (cx, cy)."""
    h = side / 2
    if shape in ("circle", "ring", "dog"):
        ry = h * (0.6 if shape == "dog" else 1.0)
        angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = [(cx + h * np.cos(a), cy + ry * np.sin(a)) for a in angles]
    elif shape in ("square", "bag"):
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "book":
        pts = [
            (cx - h, cy - h / 2),
            (cx + h, cy - h / 2),
            (cx + h, cy + h / 2),
            (cx - h, cy + h / 2),
        ]
    elif shape == "cup":
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h / 2, cy + h), (cx - h / 2, cy + h)]
    elif shape == "triangle":
        pts = [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "diamond":
        pts = [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    elif shape == "cross":
        t = h / 3
        pts = [
            (cx - t, cy - h),
            (cx + t, cy - h),
            (cx + t, cy - t),
            (cx + h, cy - t),
            (cx + h, cy + t),
            (cx + t, cy + t),
            (cx + t, cy + h),
            (cx - t, cy + h),
            (cx - t, cy + t),
            (cx - h, cy + t),
            (cx - h, cy - t),
            (cx - t, cy - t),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return tuple((int(round(x)), int(round(y))) for x, y in pts)


def _overlaps(box: tuple[float, ...], others: list[tuple[float, ...]], gap: float = 2) -> bool:
    return any(
        box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap
        for o in others
    )


def _place(
    rng: np.random.Generator, side: int, region: Region | None, taken: list[tuple[float, ...]]
) -> tuple[float, float, float, float] | None:
    """A box of `side` pixels whose centre lies in `region` (anywhere if None), not overlapping
    `taken`; None after a bounded number of tries."""
    h = side / 2
    for _ in range(40):
        if region is None:
            lo_x, hi_x, lo_y, hi_y = 0.0, IMAGE_SIZE, 0.0, IMAGE_SIZE
        else:
            col = ("left", "center", "right").index(region.col)
            row = ("top", "bottom").index(region.row)
            # keep centres a few pixels inside their cell, so "top"/"left" are never borderline
            lo_x = col * IMAGE_SIZE / 3 + CELL_MARGIN
            hi_x = (col + 1) * IMAGE_SIZE / 3 - CELL_MARGIN
            lo_y = row * IMAGE_SIZE / 2 + CELL_MARGIN
            hi_y = (row + 1) * IMAGE_SIZE / 2 - CELL_MARGIN
        cx = rng.uniform(max(lo_x, h + 1), min(hi_x, IMAGE_SIZE - h - 1) - 1e-3)
        cy = rng.uniform(max(lo_y, h + 1), min(hi_y, IMAGE_SIZE - h - 1) - 1e-3)
        box = (cx - h, cy - h, cx + h, cy + h)
        if not _overlaps(box, taken):
            return box
    return None


def _person(
    rng: np.random.Generator,
    colour: Colour,
    shape: Shape,
    region: Region | None,
    taken: list[tuple[float, ...]],
) -> Thing | None:
    size = SIZES[int(rng.integers(2))]
    lo, hi = SIZE_PIXELS[size]
    side = int(rng.integers(lo, hi + 1))
    box = _place(rng, side, region, taken)
    if box is None:
        return None
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    thing = Thing("person", colour, shape, size, box, shape_polygon(shape.name, cx, cy, side))
    if region is not None and thing.region != region:  # centre rounding at a cell border
        return None
    return thing


def _prop(rng: np.random.Generator, taken: list[tuple[float, ...]]) -> Thing | None:
    kind = PROP_CLASSES[int(rng.integers(len(PROP_CLASSES)))]
    side = int(rng.integers(PROP_PIXELS[0], PROP_PIXELS[1] + 1))
    box = _place(rng, side, None, taken)
    if box is None:
        return None
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return Thing(kind, None, None, "small", box, shape_polygon(kind, cx, cy, side))


def sample_scene(rng: np.random.Generator, spec: SceneSpec) -> Scene:
    """Persons first (distinct colours; with `spec.distinct` also distinct shapes and regions),
    then props, then shuffled so persons are not always the first objects."""
    while True:
        scene = _try_scene(rng, spec)
        if len(scene.persons) >= spec.min_persons:
            return scene


def _try_scene(rng: np.random.Generator, spec: SceneSpec) -> Scene:
    n_persons = int(rng.integers(spec.min_persons, spec.max_persons + 1))
    n_props = int(rng.integers(0, min(spec.max_props, spec.max_things - n_persons) + 1))
    colours = rng.permutation(len(COLOURS))[:n_persons]
    if spec.distinct:
        shapes = rng.permutation(len(SHAPES))[:n_persons]
        regions: list[Region | None] = [REGIONS[i] for i in rng.permutation(len(REGIONS))]
    else:
        shapes = rng.integers(len(SHAPES), size=n_persons)
        regions = [None] * n_persons
    things: list[Thing] = []
    for colour_i, shape_i, region in zip(colours, shapes, regions):
        for _ in range(6):
            person = _person(
                rng, COLOURS[colour_i], SHAPES[shape_i], region, [t.box for t in things]
            )
            if person is not None:
                things.append(person)
                break
    for _ in range(n_props):
        prop = _prop(rng, [t.box for t in things])
        if prop is not None:
            things.append(prop)
    order = rng.permutation(len(things))
    level = int(rng.integers(200, 236))
    tint = rng.integers(-8, 9, size=3)
    background = tuple(int(v) for v in np.clip(level + tint, 0, 255))
    return Scene(tuple(things[i] for i in order), background)


def images_for(n_questions: int, questions_per_image: tuple[int, ...]) -> int:
    """How many images `n_questions` questions need when image i gets
    `questions_per_image[i % len(questions_per_image)]` of them (cycled)."""
    images, asked = 0, 0
    while asked < n_questions:
        asked += questions_per_image[images % len(questions_per_image)]
        images += 1
    return images
