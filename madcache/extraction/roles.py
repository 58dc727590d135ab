"""The teachers of one extraction by role: vision (V_t), text (T_t, words) and relevance.

The relevance model must embed images and texts in one space (CLIP-style): it scores each word's
visual relevance and the zero-shot logits. A role may share its teacher with another (plain CLIP
fills all three); each distinct teacher is loaded once and runs each input once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from madcache.core.errors import ConfigError
from madcache.extraction.config import ExtractConfig, TeacherSpec
from madcache.teachers.base import Teacher

Loader = Callable[..., Teacher]


@dataclass
class TeacherSet:
    vision: Teacher
    text: Teacher
    relevance: Teacher | None
    specs: dict[str, TeacherSpec | None]

    @property
    def distinct(self) -> dict[str, Teacher]:
        """Each distinct teacher once, keyed by the first role that uses it."""
        found: dict[str, Teacher] = {}
        for role in ("vision", "text", "relevance"):
            teacher = getattr(self, role)
            if teacher is not None and all(teacher is not t for t in found.values()):
                found[role] = teacher
        return found

    def key_of(self, teacher: Teacher) -> str:
        return next(key for key, t in self.distinct.items() if t is teacher)

    def image_keys(self) -> list[str]:
        """Teachers that embed images: the vision teacher and the relevance model."""
        return _unique_keys(self, [self.vision, self.relevance])

    def text_keys(self) -> list[str]:
        """Teachers that encode the scored texts: the text teacher and the relevance model."""
        return _unique_keys(self, [self.text, self.relevance])

    def fingerprint(self) -> dict[str, Any]:
        return {
            role: None if getattr(self, role) is None else getattr(self, role).fingerprint()
            for role in ("vision", "text", "relevance")
        }

    def names(self) -> dict[str, str | None]:
        return {role: None if spec is None else spec.name for role, spec in self.specs.items()}


def _unique_keys(teachers: TeacherSet, members: list[Teacher | None]) -> list[str]:
    keys = [teachers.key_of(t) for t in members if t is not None]
    return list(dict.fromkeys(keys))


def load_teacher_set(config: ExtractConfig, loader: Loader | None = None) -> TeacherSet:
    """Load each distinct (name, checkpoint) once and check every role can do its job."""
    if loader is None:
        from madcache.teachers import load_teacher as loader
    loaded: dict[TeacherSpec, Teacher] = {}

    def get(spec: TeacherSpec) -> Teacher:
        if spec not in loaded:
            loaded[spec] = loader(spec.name, checkpoint=spec.checkpoint, device=config.device)
        return loaded[spec]

    vision, text = get(config.vision_spec), get(config.text_spec)
    _require(vision, "image", "vision teacher", config.vision_spec.name)
    _require(text, "text", "text teacher", config.text_spec.name)
    relevance_spec = config.relevance_spec
    if relevance_spec is not None:
        relevance = get(relevance_spec)
        if not _is_joint(relevance):
            raise ConfigError(
                f"relevance model {relevance_spec.name} must embed images and texts "
                "in one space (a CLIP-style teacher)"
            )
    else:
        relevance_spec, relevance = _default_relevance(config, vision, text)
    return TeacherSet(
        vision,
        text,
        relevance,
        {"vision": config.vision_spec, "text": config.text_spec, "relevance": relevance_spec},
    )


def _default_relevance(
    config: ExtractConfig, vision: Teacher, text: Teacher
) -> tuple[TeacherSpec | None, Teacher | None]:
    for spec, teacher in ((config.vision_spec, vision), (config.text_spec, text)):
        if _is_joint(teacher):
            return spec, teacher
    return None, None


def _is_joint(teacher: Teacher) -> bool:
    return bool(teacher.joint_space) and {"image", "text"} <= set(teacher.modalities)


def _require(teacher: Teacher, modality: str, role: str, name: str) -> None:
    if modality not in teacher.modalities:
        raise ConfigError(
            f"{role} {name} has no {modality} encoder (it encodes "
            f"{', '.join(sorted(teacher.modalities))})"
        )
