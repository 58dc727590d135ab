"""`madcache demo ...`: the built-in demo world (data, the tiny CLIP-style teacher, the main job)."""

from __future__ import annotations

import click

from madcache.cli import LazyGroup


@click.group(
    cls=LazyGroup,
    lazy={
        "data": (
            "madcache.commands.demo_data:demo_data",
            "Generate the demo world in the original VCR / SNLI-VE / VQA v2 formats plus a "
            "caption corpus.",
        ),
        "teacher": (
            "madcache.commands.demo_teacher:demo_teacher",
            "Pretrain `madcache-demo` (CLIP loss, CPU-sized); a complete checkpoint with "
            "the same settings is kept as is.",
        ),
        "student": (
            "madcache.commands.demo_student:demo_student",
            "MLM + image-text matching on the captions (no task labels); a finished "
            "student in OUT is kept as is, and refused if it was pretrained with other "
            "settings.",
        ),
        "run": (
            "madcache.commands.demo_run:demo_run",
            "World -> teacher -> student -> caches -> regions -> regime check (it picks the "
            "shot size) -> sweep (baseline/MD/MAD x seeds, standard + SM, zero-shot) -> "
            "report.",
        ),
        "search": (
            "madcache.commands.demo_search:demo_search",
            "Baseline-only search of the demo's training settings on a dev split held out "
            "of the demo's train data (never val, never MD/MAD).",
        ),
        "study": (
            "madcache.commands.demo_study:demo_study",
            "Recipe (lr) chosen on the baseline with dev early stopping -> regime check at "
            "convergence -> baseline / MD / MAD x seeds (grown until the SM paired half-width "
            "reaches the target), each evaluated on val and SM with its dev-selected step -> "
            "OUT/study/study.md. Rerunning finishes only what is missing.",
        ),
        "diagnose": (
            "madcache.commands.demo_diagnose:demo_diagnose",
            "baseline, md, md-ts, md-ts-cw, mad-af-plain, mad x 2 seeds at the demo's shot "
            "size, with learning curves, text-side probes and the task-start gradients of "
            "each term.",
        ),
    },
)
def demo() -> None:
    """The demo world: generate data, pretrain its teacher and student, run the whole pipeline."""
