"""`madcache regions`: extract region features of a dataset split into a region store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from madcache.core.config import parse_key_values

_existing = click.Path(path_type=Path, exists=True)


@click.command("regions")
@click.option("--dataset", required=True, help="A registered dataset: vcr, snli-ve, vqa.")
@click.option("--root", required=True, type=_existing, help="Dataset root (original files).")
@click.option("--split", required=True, help="A split, or several: train,val (one store for "
                                            "training and validation).")
@click.option("--extractor", default="boxcrop", show_default=True,
              help="boxcrop, backbone or butd-tsv.")
@click.option("--weights", type=_existing, help="backbone: local weights (.safetensors / .pt).")
@click.option("--backbone", help="backbone: a timm name or torchvision:NAME [default: resnet50].")
@click.option("--image-size", type=click.IntRange(min=32), help="backbone: input size [224].")
@click.option("--device", help="backbone: cpu, cuda or cuda:N [cpu].")
@click.option("--tsv", type=_existing, help="butd-tsv: the bottom-up-attention TSV file.")
@click.option("--out", metavar="PATH|s3://BUCKET/PREFIX",
              help="Store directory or object-store URL [default: cache/<dataset>/<split>/"
                                        "regions-<extractor>]; splits joined by +.")
@click.option("--max-regions", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per shard.")
@click.option("--format", "store_format", type=click.Choice(["zarr", "hdf5"]), default="zarr",
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite a store built with another fingerprint.")
@click.option("--read-option", "read_options", multiple=True, metavar="KEY=VALUE",
              help="A dataset reader option (repeatable), e.g. annotations=FILE for VCR.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def regions(dataset: str, root: Path, split: str, extractor: str, out: str | None,
            max_regions: int, shard_size: int, store_format: str, force: bool,
            read_options: tuple[str, ...], no_progress: bool, **extractor_options: Any) -> None:
    """Extract region features (one entry per image) for the student; resumable."""
    from madcache.students.regions import build_region_store

    summary = build_region_store(
        dataset=dataset, root=root, split=split, extractor=extractor, out=out,
        max_regions=max_regions, format=store_format, force=force, shard_size=shard_size,
        read_options=parse_key_values(read_options, option="--read-option"),
        progress=not no_progress,
        extractor_options={k: v for k, v in extractor_options.items() if v is not None})
    click.echo(f"region store {summary['path']}: {summary['images']} images, "
               f"{summary['regions']} regions ({summary['shards_written']} shards written, "
               f"{summary['shards_reused']} reused)")
