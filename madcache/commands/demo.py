"""`madcache demo ...`: the built-in demo world (data, the tiny CLIP-style teacher, the main job)."""

from __future__ import annotations

import click

from madcache.cli import LazyGroup


@click.group(cls=LazyGroup, lazy={
    "data": "madcache.commands.demo_data:demo_data",
    "teacher": "madcache.commands.demo_teacher:demo_teacher",
    "student": "madcache.commands.demo_student:demo_student",
    "run": "madcache.commands.demo_run:demo_run",
    "search": "madcache.commands.demo_search:demo_search",
    "study": "madcache.commands.demo_study:demo_study",
    "diagnose": "madcache.commands.demo_diagnose:demo_diagnose",
})
def demo() -> None:
    """The demo world: generate data, pretrain its teacher and student, run the whole pipeline."""
