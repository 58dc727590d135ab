"""`madcache data`: look at a dataset split, draw a low-shot split, write shortcut-mitigated VCR."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from madcache.commands.options import NameChoice, dataset_names
from madcache.core.config import parse_key_values
from madcache.core.io import check_output_location, refuse_foreign_file
from madcache.data.records import ReadResult


SM_REPORT = "sm_report.json"
# commands that write a file derived from a dataset write it outside the dataset's root unless
# asked (core.io.check_output_location)
INTO_ROOT = click.option("--into-root", is_flag=True,
                         help="Allow --out inside the dataset root (never over a file of it).")


def read_options(func):
    """The options every `data` command that reads a split takes."""
    decorators = [
        click.option("--dataset", required=True, type=NameChoice(dataset_names)),
        click.option("--root", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="The dataset's root folder."),
        click.option("--split", required=True,
                     help="train/val/test (dev for SNLI-VE) or a .jsonl path under the root."),
        click.option("--skip-bad", is_flag=True,
                     help="Skip malformed records and list them, instead of stopping."),
        click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="A reader option, e.g. renderer=name or check_files=true."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _read(dataset: str, root: Path, split: str, skip_bad: bool, options: tuple[str, ...]
          ) -> ReadResult:
    from madcache.data import read_examples

    return read_examples(dataset, root, split, skip_bad=skip_bad,
                         **parse_key_values(options, option="--option"))


def split_stats(dataset: str, result: ReadResult) -> dict[str, Any]:
    """Counts of a read split: examples, distinct images, label and category histograms."""
    from madcache.data import DATASETS

    names = DATASETS.get(dataset).label_names
    labels = Counter("none" if ex.label is None else names[ex.label] if names else str(ex.label)
                     for ex in result.examples)
    return {"dataset": dataset,
            "examples": len(result.examples),
            "images": len({ex.image_id for ex in result.examples}),
            "labels": dict(sorted(labels.items())),
            "categories": dict(sorted(Counter(ex.category for ex in result.examples).items())),
            "skipped": [asdict(bad) for bad in result.skipped]}


def _echo_table(stats: dict[str, Any]) -> None:
    click.echo(f"{stats['dataset']}: {stats['examples']} examples, {stats['images']} images, "
               f"{len(stats['skipped'])} skipped")
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
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(dataset: str, root: Path, split: str, skip_bad: bool, options: tuple[str, ...],
          as_json: bool) -> None:
    """Read a split and print its counts."""
    result = split_stats(dataset, _read(dataset, root, split, skip_bad, options))
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        _echo_table(result)


@data.command()
@read_options
@click.option("--per-category", "k", required=True, type=click.IntRange(min=1),
              help="Units per category (VCR questions, SNLI-VE / VQA images).")
@click.option("--seed", required=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@INTO_ROOT
def lowshot(dataset: str, root: Path, split: str, skip_bad: bool, options: tuple[str, ...],
            k: int, seed: int, out: Path, into_root: bool) -> None:
    """Draw a seeded low-shot split and save it as JSON."""
    from madcache.data.lowshot import is_split_file, sample_per_category

    check_output_location(out, roots=[root], inside_root_ok=into_root)
    refuse_foreign_file(out, ours=is_split_file, what="low-shot split")
    result = _read(dataset, root, split, skip_bad, options)
    drawn = sample_per_category(result.examples, k=k, seed=seed)
    if result.skipped:
        drawn.params["skipped_records"] = [asdict(bad) for bad in result.skipped]
    drawn.save(out)
    click.echo(f"{len(drawn.ids)} examples from {sum(drawn.counts.values())} "
               f"{drawn.params['unit']}s -> {out}")
    for category, short in drawn.shortfalls.items():
        click.echo(f"shortfall: {category} has {short['available']} of {short['wanted']}")
    for bad in result.skipped:
        click.echo(f"skipped {bad.file}:{bad.line} field {bad.field}: {bad.reason}")


@data.command()
@click.option("--root", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", default="val", show_default=True,
              help="val/train/test or a .jsonl path under the root.")
@click.option("--annotations", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read this annotation file instead of the split's.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <split>.jsonl and sm_report.json.")
@click.option("--skip-bad", is_flag=True)
@INTO_ROOT
def sm(root: Path, split: str, annotations: Path | None, out: Path, skip_bad: bool,
       into_root: bool) -> None:
    """Write the shortcut-mitigated version of a VCR split (Ye & Kovashka 2021)."""
    from madcache.data.sm import shortcut_mitigate_file
    from madcache.data.vcr import VcrReader

    source = VcrReader().annotation_file(root, split, None if annotations is None
                                          else str(annotations))
    name = Path(split).name if split.endswith(".jsonl") else f"{split}.jsonl"
    check_output_location(out / name, roots=[root], inputs=[source], inside_root_ok=into_root)
    check_output_location(out / SM_REPORT, roots=[root], inputs=[source],
                          inside_root_ok=into_root)
    report = shortcut_mitigate_file(source, out / name, skip_bad=skip_bad)
    (out / SM_REPORT).write_text(json.dumps(report.to_json(), indent=1) + "\n",
                                        encoding="utf-8")
    rules = ", ".join(f"{rule} {counts.records}" for rule, counts in report.rules.items())
    click.echo(f"{report.written} of {report.records} records in the SM split ({rules}); "
               f"{len(report.not_qualifying)} fit neither rule, {len(report.skipped)} skipped "
               f"-> {out / name}")
