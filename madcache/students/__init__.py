"""Students: the `Student` protocol (base.py), the built-in single-stream VL transformer, the
pretrained transformers students `visualbert` and `vilt` (pretrained.py), region features
(regions.py, region_extractors.py), pixels or regions by student (visual.py) and word pooling
(tokens.py). docs/students.md.

Adding a student = one module with a factory and one `STUDENTS.register` line below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from madcache.core.errors import CheckpointNotFoundError
from madcache.core.io import load_weights, loading, read_json
from madcache.students.base import STUDENTS, RegionInputs, Student, StudentOutput, check_student
from madcache.students.single_stream import single_stream
from madcache.students.vilt import vilt
from madcache.students.visualbert import visualbert

STUDENTS.register("single-stream", single_stream)
STUDENTS.register("visualbert", visualbert)
STUDENTS.register("vilt", vilt)

STUDENT_JSON = "student.json"
STUDENT_WEIGHTS = "model.safetensors"
PATH_OPTIONS = ("tokenizer_dir", "image_processor_dir")


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
    for key in PATH_OPTIONS:
        if options.get(key) is not None and not Path(options[key]).is_absolute():
            options[key] = str(directory / options[key])
    model = build_student(meta["student"], **options)
    weights = directory / STUDENT_WEIGHTS
    state = load_weights(weights, what="student weights")
    with loading(weights, what="student weights"):
        model.load_state_dict(state)
    return model


__all__ = ["STUDENTS", "RegionInputs", "Student", "StudentOutput", "build_student",
           "save_student", "load_student"]
