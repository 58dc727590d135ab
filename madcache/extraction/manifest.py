"""The cache manifest of an extraction: fingerprint, dims, settings, unavailable targets.

The fingerprint holds everything that changes a stored value (teacher weights and preprocessing,
dataset bytes and read options, selection and prompt settings, dtype, which examples and how
they are sharded, the forward micro-batch, a pixel-changing image path). Run-time choices that
do not (batch size, workers, device index, ranks) stay outside it, so a resume may change them;
the precision of the forward (device type and autocast dtype) is recorded per shard and may not
change within one cache.
"""

from __future__ import annotations

from typing import Any

from madcache import __version__
from madcache.extraction.config import ExtractConfig
from madcache.extraction.images import fingerprint_entry
from madcache.extraction.jobs import YakeSettings
from madcache.extraction.protocols import LogitProtocol, VqaProtocol
from madcache.extraction.roles import TeacherSet

ROW_LAYOUT = (
    "text rows are (image, text) pairs within a shard: a string scored under two "
    "images is stored twice, since word_vr depends on the image"
)


def build_fingerprint(
    config: ExtractConfig,
    teachers: TeacherSet,
    task: LogitProtocol,
    yake: YakeSettings,
    dataset_fp: dict[str, Any],
    format_version: Any,
) -> dict[str, Any]:
    """The fingerprint; `images` only for a pixel-changing `--image-decode` (an `exact` cache's
    fingerprint is the one it had before the choice existed, so such caches still resume)."""
    images = fingerprint_entry(config.image_decode)
    return {
        "format_version": format_version,
        "dataset": dataset_fp,
        "teachers": teachers.fingerprint(),
        "selection": yake.as_dict(),
        "prompts": {
            "protocol": config.task_protocol,
            **task.settings(),
            "default_logits": config.logits_default,
        },
        "dtype": config.dtype,
        "examples": {
            "limit": config.limit,
            "shard_size": config.shard_size,
            "skip_bad": config.skip_bad,
            "grouping": "by image_id, sorted",
        },
        "forward": {
            "micro_batch": config.forward_batch,
            "cut": "fixed offsets of each shard's image / text lists",
        },
        **({} if images is None else {"images": images}),
    }


def build_manifest(
    config: ExtractConfig,
    teachers: TeacherSet,
    task: LogitProtocol,
    fingerprint: dict[str, Any],
    *,
    num_choices: int,
    num_examples: int,
    num_shards: int,
    skipped: list[dict[str, Any]],
) -> dict[str, Any]:
    missing = unavailable_targets(task, teachers.relevance is not None)
    return {
        "fingerprint": fingerprint,
        "dataset": config.dataset,
        "split": config.split,
        "root": str(config.root),
        "teachers": teachers.names(),
        "dims": {"image": teachers.vision.image_dim, "text": teachers.text.text_dim},
        "num_choices": num_choices,
        "num_examples": num_examples,
        "num_shards": num_shards,
        "dtype": config.dtype,
        "logits": [] if missing else list(task.logit_names),
        "default_logits": None if missing else config.logits_default,
        "settings": {
            "default_logits": config.logits_default,
            "shard_size": config.shard_size,
            "limit": config.limit,
            "batch_size": config.batch_size,
            "workers": config.workers,
            "threads": config.threads,
            "device": config.device,
            "image_decode": config.image_decode,
            "text_rows": ROW_LAYOUT,
            "zero_shot": "prediction = argmax of the stored logits (SNLI-VE: of "
            "-scale * |similarity - kmeans centre|)",
        },
        "unavailable": missing,
        "extra": up_front_extra(task, teachers.relevance is not None),
        "skipped_records": skipped,
        "madcache_version": __version__,
    }


def up_front_extra(task: LogitProtocol, has_relevance: bool) -> dict[str, Any]:
    """Split-level results known before any shard (VQA's answer vocabulary): every rank writes
    the same, and `finish` needs no teacher to find them."""
    if isinstance(task, VqaProtocol) and has_relevance:
        return {"answer_vocab": list(task.vocab)}
    return {}


def unavailable_targets(task: LogitProtocol, has_relevance: bool) -> list[str]:
    """Targets that need a joint-space relevance model, when there is none."""
    if has_relevance:
        return []
    others = [name for name in task.arrays if not name.startswith("logits/")]
    return ["word_vr", "word_score", "logits", *others]


def unavailable_warning(manifest: dict[str, Any]) -> str | None:
    missing = manifest["unavailable"]
    if not missing:
        return None
    return (
        f"no joint-space relevance model (pass --relevance-model, e.g. a CLIP teacher): "
        f"targets {', '.join(missing)} are not computed (word_vr is stored as NaN), so "
        "methods with token selection or confidence weighting (mad and its TS/CW ablations) "
        "cannot run on this cache; `madcache cache info` lists them"
    )
