"""Students: the `Student` protocol (base.py), the built-in single-stream VL transformer, the
pretrained transformers students `visualbert` and `vilt` (pretrained.py), region features
(regions.py, region_extractors.py), pixels or regions by student (visual.py), word pooling
(tokens.py) and `clip-finetune`, the teacher's own architecture finetuned (clip_finetune.py).
docs/students.md.

Adding a student = one module with a factory and one `STUDENTS.register` line below: a
`StudentSpec` of the factory and the options that name files beside a saved student.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madcache.core.errors import CheckpointNotFoundError
from madcache.core.io import load_weights, loading, read_json
from madcache.students.base import (
    STUDENTS,
    RegionInputs,
    Student,
    StudentFactory,
    StudentOutput,
    check_student,
)
from madcache.students.clip_finetune import clip_finetune
from madcache.students.single_stream import single_stream
from madcache.students.uniter import uniter
from madcache.students.vilt import vilt
from madcache.students.visual import visual_input
from madcache.students.visualbert import visualbert
from madcache.students.vl_bert import vl_bert


@dataclass(frozen=True)
class StudentSpec:
    """A registered student: `factory(**options)` builds it; `path_options` are the options
    naming files or folders that `export_options` may give relative to the saved student's
    directory (`load_student` resolves them against it). `is_teacher`: the student is a teacher
    architecture itself (`clip-finetune`), so a method that distils a teacher into it, or has an
    adaptive-finetuning stage, is refused (`madcache.train.config`)."""

    factory: StudentFactory
    path_options: tuple[str, ...] = ()
    is_teacher: bool = False

    def __call__(self, **options: Any) -> Student:
        return self.factory(**options)

    @property
    def visual_input(self) -> str:
        """What the student reads (`students/visual.py`), as its factory declares."""
        return visual_input(self.factory)


STUDENTS.register("single-stream", StudentSpec(single_stream, path_options=("tokenizer_dir",)))
STUDENTS.register("visualbert", StudentSpec(visualbert, path_options=("tokenizer_dir",)))
STUDENTS.register("uniter", StudentSpec(uniter, path_options=("tokenizer_dir",)))
STUDENTS.register("vilt", StudentSpec(vilt, path_options=("tokenizer_dir", "image_processor_dir")))
STUDENTS.register("vl-bert", StudentSpec(vl_bert, path_options=("tokenizer_dir",)))

STUDENTS.register(
    "clip-finetune",
    StudentSpec(
        clip_finetune,
        path_options=("model", "checkpoint", "hf_clip", "zero_shot_cache", "answer_vocab"),
        is_teacher=True,
    ),
)

STUDENT_JSON = "student.json"
STUDENT_WEIGHTS = "model.safetensors"


def is_teacher(name: str) -> bool:
    """Whether the registered student `name` is a teacher architecture itself (its spec's
    `is_teacher`); False for a name not registered (`build_student` refuses it later)."""
    return name in STUDENTS and bool(getattr(STUDENTS.get(name), "is_teacher", False))


def build_student(name: str, **options: Any) -> Student:
    """A registered student built from its options (unknown names list the valid ones),
    checked to implement the whole `Student` protocol (so a gap fails before training)."""
    student = STUDENTS.get(name)(**options)
    check_student(student, name)
    return student


def save_student(model, directory: str | Path) -> None:
    """`student.json` (name + options that rebuild it) + `model.safetensors` (+ side files).

    The student needs `name` and `export_options(directory) -> dict` (see docs/students.md);
    path options it returns relative to `directory` are resolved against it on loading.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    options = model.export_options(directory)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / STUDENT_WEIGHTS))
    meta = {"student": model.name, "options": options}
    (directory / STUDENT_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load_student(directory: str | Path):
    """The student `save_student` wrote (eval mode is left to the caller); a missing, corrupt
    or non-matching file is one error line naming it."""
    directory = Path(directory)
    if not (directory / STUDENT_JSON).is_file():
        raise CheckpointNotFoundError(f"no saved student in {directory} (no {STUDENT_JSON})")
    meta = read_json(directory / STUDENT_JSON)
    options = dict(meta["options"])
    for key in STUDENTS.get(meta["student"]).path_options:
        if options.get(key) is not None and not Path(options[key]).is_absolute():
            options[key] = str(directory / options[key])
    model = build_student(meta["student"], **options)
    weights = directory / STUDENT_WEIGHTS
    state = load_weights(weights, what="student weights")
    with loading(weights, what="student weights"):
        model.load_state_dict(state)
    return model


__all__ = [
    "STUDENTS",
    "StudentSpec",
    "RegionInputs",
    "Student",
    "StudentOutput",
    "build_student",
    "save_student",
    "load_student",
    "is_teacher",
]
