"""`madcache data`: look at a dataset split, draw a low-shot split, write shortcut-mitigated VCR."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from madcache.commands.options import build_config, config_options
from madcache.core.io import check_output_location, refuse_foreign_file
from madcache.data.config import LowshotConfig, ReadConfig, SmConfig

if TYPE_CHECKING:
    from madcache.data.records import ReadResult


SM_REPORT = "sm_report.json"


def split_stats(dataset: str, result: ReadResult) -> dict[str, Any]:
    """Counts of a read split: examples, distinct images, label and category histograms."""
    from madcache.data import DATASETS

    names = DATASETS.get(dataset).label_names
    labels = Counter(
        "none" if ex.label is None else names[ex.label] if names else str(ex.label)
        for ex in result.examples
    )
    return {
        "dataset": dataset,
        "examples": len(result.examples),
        "images": len({ex.image_id for ex in result.examples}),
        "labels": dict(sorted(labels.items())),
        "categories": dict(sorted(Counter(ex.category for ex in result.examples).items())),
        "skipped": [asdict(bad) for bad in result.skipped],
    }


def _echo_table(stats: dict[str, Any]) -> None:
    click.echo(
        f"{stats['dataset']}: {stats['examples']} examples, {stats['images']} images, "
        f"{len(stats['skipped'])} skipped"
    )
    for title in ("labels", "categories"):
        click.echo(f"{title}:")
        for name, count in stats[title].items():
            click.echo(f"  {name:<16} {count:>8}")
    for bad in stats["skipped"]:
        where = f"{bad['file']}:{bad['line']}" if bad["line"] is not None else bad["file"]
        click.echo(f"skipped {where} field {bad['field']}: {bad['reason']}")


@click.group()
def data() -> None:
    """Dataset tools: statistics, low-shot splits, shortcut-mitigated VCR."""


@data.command()
@config_options(ReadConfig, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(as_json: bool, **flags: Any) -> None:
    """Read a split and print its counts."""
    config = build_config(ReadConfig, flags)
    result = split_stats(config.dataset, config.read())
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        _echo_table(result)


@data.command()
@config_options(LowshotConfig, required=True)
def lowshot(**flags: Any) -> None:
    """Draw a seeded low-shot split and save it as JSON."""
    from madcache.data.lowshot import is_split_file, sample_per_category

    config = build_config(LowshotConfig, flags)
    # a file derived from a dataset goes outside the dataset's root unless asked
    check_output_location(config.out, roots=[config.root], inside_root_ok=config.into_root)
    refuse_foreign_file(config.out, ours=is_split_file, what="low-shot split")
    result = config.read()
    drawn = sample_per_category(result.examples, k=config.per_category, seed=config.seed)
    if result.skipped:
        drawn.params["skipped_records"] = [asdict(bad) for bad in result.skipped]
    drawn.save(config.out)
    click.echo(
        f"{len(drawn.ids)} examples from {sum(drawn.counts.values())} "
        f"{drawn.params['unit']}s -> {config.out}"
    )
    for category, short in drawn.shortfalls.items():
        click.echo(f"shortfall: {category} has {short['available']} of {short['wanted']}")
    for bad in result.skipped:
        click.echo(f"skipped {bad.file}:{bad.line} field {bad.field}: {bad.reason}")


@data.command()
@config_options(SmConfig, required=True)
def sm(**flags: Any) -> None:
    """Write the shortcut-mitigated version of a VCR split (Ye & Kovashka 2021)."""
    from madcache.data.sm import shortcut_mitigate_file
    from madcache.data.vcr import VcrReader

    config = build_config(SmConfig, flags)
    root, split, out = config.root, config.split, config.out
    source = VcrReader().annotation_file(
        root, split, None if config.annotations is None else str(config.annotations)
    )
    name = Path(split).name if split.endswith(".jsonl") else f"{split}.jsonl"
    for written in (out / name, out / SM_REPORT):
        check_output_location(
            written, roots=[root], inputs=[source], inside_root_ok=config.into_root
        )
    report = shortcut_mitigate_file(source, out / name, skip_bad=config.skip_bad)
    (out / SM_REPORT).write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    rules = ", ".join(f"{rule} {counts.records}" for rule, counts in report.rules.items())
    click.echo(
        f"{report.written} of {report.records} records in the SM split ({rules}); "
        f"{len(report.not_qualifying)} fit neither rule, {len(report.skipped)} skipped "
        f"-> {out / name}"
    )
