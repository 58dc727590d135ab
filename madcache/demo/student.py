"""Pretrain the built-in single-stream student on the demo captions (`madcache demo student`).

The paper's students (VL-BERT, UNITER) start every downstream run VL-pretrained, on Conceptual
Captions with MLM + image-text matching, so adaptive finetuning refines a model that already
ties words to regions. This is that step in miniature: the demo student (the same architecture
every demo run trains) learns MLM + ITM on the demo world's caption corpus (captions/, images
the labelled datasets never show), on the region features a VCR run sees (boxcrop over the
whole image and each object's box). It is saved once as a local `save_student` directory, and
every demo method (baseline, MD, MAD, ablations) starts from it (`init_from`).

No task label is involved: captions are image-text pairs. MLM reads every caption; image-text
matching pairs each image with its *describing* caption, the first of its five, which lists
every object by its looks ("a small pink diamond, a grey bag and a small blue ring."), as a
Conceptual Captions alt-text describes its image; a negative is that caption with another image
of the batch. The other four captions state the world's knowledge ("a shy teacher grading papers
on the balcony.") and are true of the image only through it: on all five, ITM stayed at chance
(ln 2) for 800 steps; on the describing ones it left chance after ~500 (docs/demo-report.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madcache.core.config import MAX_THREADS, changed_settings, setting
from madcache.core.errors import ConfigError, DataError
from madcache.core.io import read_json, write_json
from madcache.data.records import Example, Text
from madcache.demo.teacher import CAPTIONS

SUMMARY = "pretraining.json"
# 2: the untied MLM decoder and ITM on the describing caption (a version-1 student's weights do
# not fit the student any more)
VERSION = 2
MAX_REGIONS = 16  # the region store's default (students/regions.py)


@dataclass(frozen=True)
class DemoStudentConfig:
    """The demo student's VL pretraining (the flags of `madcache demo student`)."""

    data: Path = setting(help="Demo world root (holds captions/captions.jsonl and images/).")
    out: Path = setting(help="Directory of the saved student (`--student-option init_from=OUT`).")
    # chosen on the pretraining's own held-out losses, never on a task: at 5e-4 x 500 steps the
    # held-out ITM loss was still at chance (0.678); at 1e-3 x 1000 it is 0.327 (MLM 0.90),
    # ~220 s on one thread, inside the demo teacher's time beside it
    steps: int = setting(1000, minimum=1, help="Pretraining steps.")
    batch_size: int = setting(32, minimum=1, help="Captions per step.")
    lr: float = setting(1e-3, above=0, help="Peak learning rate (AdamW).")
    warmup: float = setting(0.1, minimum=0, below=1, help="Fraction of the steps spent warming up.")
    weight_decay: float = setting(0.01, minimum=0, help="AdamW weight decay.")
    seed: int = setting(0, minimum=0, help="Seed of the initialisation and the batches.")
    threads: int = setting(
        1,
        minimum=1,
        maximum=MAX_THREADS,
        help="CPU threads torch may use. Pinned: with more, a loaded machine "
        "changed the last bits.",
    )
    eval_every: int = setting(100, minimum=1, help="Steps between held-out MLM / ITM losses.")
    held_out_images: int = setting(
        100, minimum=1, help="Caption images kept out of training, for the curves."
    )


@dataclass
class CaptionData:
    """Captions as label-free examples, with every image's region features in memory."""

    examples: list[Example]
    regions: dict[str, tuple[torch.Tensor, torch.Tensor]]  # image -> (features, boxes)


def caption_examples(root: Path) -> list[Example]:
    """One unlabelled example per caption: the caption is the MLM text; the ITM text is the
    image's describing caption (its first line in the corpus, see the module docstring)."""
    from madcache.data.paths import safe_join

    path = root / CAPTIONS
    examples, describing = [], {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(line)
        if not isinstance(record.get("boxes"), list):
            raise DataError(
                "a caption line needs the image's object 'boxes' (regenerate the "
                "demo world with `madcache demo data`)",
                file=path,
                line=line_no,
            )
        safe_join(root, record["image"], field="image")
        text = Text.from_string(record["caption"])
        describing.setdefault(record["image"], text)
        examples.append(
            Example(
                id=f"caption-{line_no}",
                dataset="captions",
                split="train",
                image_id=record["image"],
                image_path=record["image"],
                choices=(text,),
                label=None,
                category="caption",
                label_free_text=describing[record["image"]],
                raw={"boxes": record["boxes"]},
            )
        )
    return examples


def caption_regions(
    root: Path, examples: Sequence[Example]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """boxcrop features of each caption image: the whole image, then each object's box."""
    from madcache.demo.world.world import IMAGE_SIZE
    from madcache.students.region_extractors import BoxCrop, ImageItem
    from madcache.students.region_formats import WHOLE_IMAGE

    extractor, out = BoxCrop(), {}
    for example in examples:
        if example.image_id in out:
            continue
        boxes = np.asarray(example.raw["boxes"], dtype=np.float32).reshape(-1, 4) / IMAGE_SIZE
        item = ImageItem(
            example.image_id,
            root / example.image_path,
            np.concatenate([WHOLE_IMAGE, np.clip(boxes, 0, 1)])[:MAX_REGIONS],
        )
        feat, box = extractor.regions(item)
        out[example.image_id] = (torch.from_numpy(feat), torch.from_numpy(box))
    return out


def split_held_out(data: CaptionData, count: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): the last `count` images (at most a tenth) with all their captions
    are held out."""
    images = sorted(data.regions)
    count = min(count, len(images) // 10)
    held = set(images[-count:]) if count else set()
    return (
        [ex for ex in data.examples if ex.image_id not in held],
        [ex for ex in data.examples if ex.image_id in held],
    )


def pretrain_demo_student(
    config: DemoStudentConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pretrain (or reuse) the demo student; returns the summary (also `out/pretraining.json`)."""
    from madcache.students import build_student, save_student
    from madcache.students.region_extractors import BOXCROP_DIM
    from madcache.train.optim import descend, lr_at

    out = Path(config.out)
    if (out / SUMMARY).is_file():
        return finished_summary(out, config)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    examples = caption_examples(Path(config.data))
    data = CaptionData(examples, caption_regions(Path(config.data), examples))
    train, held = split_held_out(data, config.held_out_images)
    student = build_student("single-stream", task="multiple_choice", region_dim=BOXCROP_DIM)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    order = np.random.default_rng(config.seed)
    curve = [{"step": 0, **held_out_losses(student, data, held)}]
    log(f"[student] step 0: held-out {_show(curve[-1])}")
    bar = _bar(config.steps, progress)
    for step in range(config.steps):
        student.train()
        batch = [train[i] for i in order.choice(len(train), config.batch_size, replace=False)]
        losses = batch_losses(student, data, batch, seed=config.seed * 100_003 + step)
        loss = losses["mlm"] + losses["itm"]
        descend(optimizer, loss, lr=lr_at(step, config.steps, base=config.lr, warmup=config.warmup))
        bar.update(1)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            curve.append({"step": step + 1, **held_out_losses(student, data, held)})
            log(f"[student] step {step + 1}: held-out {_show(curve[-1])}")
    bar.close()
    save_student(student, out)
    summary = {
        **settings_of(config),
        "captions": len(train),
        "held_out_captions": len(held),
        "held_out_images": config.held_out_images,
        "parameters": sum(p.numel() for p in student.parameters()),
        "chance": {"itm": math.log(2)},
        "curve": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / SUMMARY, summary)
    return summary


def settings_of(config: DemoStudentConfig) -> dict[str, Any]:
    """What decides the saved student: a finished one is reused only if these match."""
    return {
        "version": VERSION,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "threads": config.threads,
    }


def finished_summary(out: Path, config: DemoStudentConfig) -> dict[str, Any]:
    """The summary of the student already in `out`, refused (one line) when it was pretrained
    with other settings or by an older version."""
    summary = read_json(out / SUMMARY, error=ConfigError, hint=f"delete {out} and rerun")
    changed = ", ".join(
        f"{k}={found!r} (now {now!r})"
        for k, (found, now) in changed_settings(summary, settings_of(config)).items()
    )
    if changed:
        raise ConfigError(
            f"{out} holds a demo student pretrained with {changed}; delete {out} "
            "to pretrain it again, or choose another --out"
        )
    return summary


def batch_losses(
    student, data: CaptionData, batch: Sequence[Example], *, seed: int
) -> dict[str, torch.Tensor]:
    """The student's own MLM + ITM losses on a batch of captions (masks and pairings seeded)."""
    from madcache.students.regions import collate_regions

    regions = collate_regions([data.regions[ex.image_id] for ex in batch])
    inputs = student.prepare(batch, regions)
    return student.pretrain_losses(inputs, batch, torch.Generator().manual_seed(seed))


@torch.no_grad()
def held_out_losses(
    student, data: CaptionData, held: Sequence[Example], batch_size: int = 64
) -> dict[str, float]:
    """Mean MLM and ITM loss on the held-out captions (fixed masks and pairings)."""
    if not held:
        return {}
    student.eval()
    sums = {"mlm": 0.0, "itm": 0.0}
    batches = [held[i : i + batch_size] for i in range(0, len(held), batch_size)]
    for n, batch in enumerate(batches):
        for key, value in batch_losses(student, data, batch, seed=n).items():
            sums[key] += value.item() / len(batches)
    return {k: round(v, 4) for k, v in sums.items()}


def _show(point: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in point.items() if k != "step")


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="student pretraining", disable=not progress)
