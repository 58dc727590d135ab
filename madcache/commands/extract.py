"""`madcache extract`: run the teachers once over a dataset split into a resumable cache."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click

from madcache.cli import UserError
from madcache.commands.options import NameChoice, dataset_names
from madcache.core.config import parse_key_values
from madcache.core.errors import FingerprintMismatchError
from madcache.core.io import human_bytes

_existing = click.Path(path_type=Path, exists=True)


def protocol_names() -> list[str]:
    from madcache.extraction.protocols import PROTOCOLS

    return PROTOCOLS.names()


@click.command("extract")
@click.option("--teacher", help="Teacher for both towers, e.g. clip-vit-b16, madcache-demo.")
@click.option("--checkpoint", type=_existing, help="Local weights of --teacher.")
@click.option("--vision-teacher", help="Image teacher (overrides --teacher), e.g. vit:DIR.")
@click.option("--vision-checkpoint", type=_existing)
@click.option("--text-teacher", help="Text teacher (overrides --teacher), e.g. roberta:DIR.")
@click.option("--text-checkpoint", type=_existing)
@click.option("--relevance-model", help="Joint-space (CLIP) model for word relevance and logits; "
                                        "default: the CLIP teacher when one is used.")
@click.option("--relevance-checkpoint", type=_existing)
@click.option("--dataset", required=True, type=NameChoice(dataset_names),
              help="A registered dataset.")
@click.option("--protocol", type=NameChoice(protocol_names),
              help="Teacher-logit protocol [default: the dataset spec's `teacher_logits`].")
@click.option("--root", required=True, type=_existing, help="Dataset root (original files).")
@click.option("--split", required=True)
@click.option("--out", metavar="PATH|s3://BUCKET/PREFIX",
              help="Cache directory or object-store URL "
                   "[default: cache/<dataset>/<split>/<teachers>].")
@click.option("--format", "store_format", type=click.Choice(["zarr", "hdf5"]), default="zarr",
              show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Storage dtype of features.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Rows per worker job (rounded up to whole --forward-batch); never changes "
                   "the cached values.")
@click.option("--forward-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Rows per teacher forward (in the fingerprint: results depend on it).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes for decoding, tokenising and YAKE (0: in-process).")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="About this many examples per shard (whole images).")
@click.option("--limit", type=click.IntRange(min=1), help="Keep the first N examples.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Overwrite a cache built with another fingerprint.")
@click.option("--skip-bad", is_flag=True, help="Skip malformed records (listed in the manifest).")
@click.option("--answer-vocab", type=_existing,
              help="VQA answer vocabulary (.txt or .json) [default: ROOT/answers.txt, else the "
                   "split's most frequent answers].")
@click.option("--answer-top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--sentence-encoder", type=_existing, help="Sentence encoder directory for VQA "
                                                         "answer prefiltering [default: MiniLM].")
@click.option("--default-logits", help="Logits used for confidence weighting [default: vcr ia, "
                                       "snli-ve kmeans, vqa template].")
@click.option("--option", "read_options", multiple=True, metavar="KEY=VALUE",
              help="A dataset reader option (repeatable), e.g. annotations=FILE for VCR; "
                   "VALUE is parsed as JSON when it can be.")
@click.option("--rank", type=click.IntRange(min=0),
              help="This process's rank [default: torchrun's RANK, else SLURM_ARRAY_TASK_ID, "
                   "else 0]; rank R extracts the shards with index % W == R.")
@click.option("--world-size", type=click.IntRange(min=1),
              help="Number of ranks [default: torchrun's WORLD_SIZE, else "
                   "SLURM_ARRAY_TASK_COUNT, else 1].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract(store_format: str, no_progress: bool, read_options: tuple[str, ...],
            **options: Any) -> None:
    """Run the teachers once over a split and write every MAD target into a sharded cache.

    A killed run resumes at the first incomplete shard when run again with the same options.
    Many processes may extract into one cache (torchrun, --rank/--world-size, a Slurm array);
    the cache is complete once `madcache cache finish` ran (automatic in most cases).
    """
    from madcache.extraction import ExtractConfig, extract as run_extraction

    config = ExtractConfig.from_dict({
        **options, "format": store_format, "progress": not no_progress,
        "read_options": parse_key_values(read_options, option="--option")})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        try:
            summary = run_extraction(config)
        except FingerprintMismatchError as exc:
            raise UserError(_mismatch_message(exc, config.output_path())) from None
    click.echo(format_summary(summary))
    if not summary.get("finished"):
        click.echo(f"rank {summary['rank']} of {summary['world_size']} done; the cache is "
                   "complete once every rank is: then run `madcache cache finish "
                   f"{summary['out']}` (rank 0 does it itself under torchrun)")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.secho(f"warning: {message}", fg="yellow", err=True)


def _mismatch_message(exc: FingerprintMismatchError, out: Path | str) -> str:
    differs = "\n".join(f"  - {d}" for d in exc.differences) or f"  {exc}"
    return (f"the cache at {out} was built with a different fingerprint; what differs:\n"
            f"{differs}\nuse --force to overwrite it, or --out for a new cache")


def format_summary(summary: dict[str, Any]) -> str:
    """The final summary as a two-column table."""
    rows = [("cache", summary["out"]), ("format", summary["format"]),
            ("examples", summary["examples"]), ("images", summary["images"]),
            ("texts", summary["texts"]),
            ("shards", f"{summary['shards']} ({summary['shards_written']} written, "
                       f"{summary['shards_resumed']} resumed"
                       + (f" by rank {summary['rank']} of {summary['world_size']}"
                          if summary.get("world_size", 1) > 1 else "") + ")"),
            ("bytes", human_bytes(summary["bytes"])), ("seconds", f"{summary['seconds']:.1f}"),
            ("samples/s", summary["samples_per_s"])]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
