"""`madcache demo data`: generate the synthetic demo world (no download)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("data")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (vcr/, snli-ve/, vqa/, captions/ and a DONE marker).")
@click.option("--size", default="default", show_default=True,
              type=click.Choice(["small", "default"]),
              help="small: seconds, for tests; default: the demo's size.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo_data(out: Path, size: str, seed: int, quiet: bool) -> None:
    """Generate the demo world in the original VCR / SNLI-VE / VQA v2 formats plus a caption
    corpus. Same seed, same bytes; a complete folder is left as it is."""
    from madcache.demo.world import generate_demo_world

    summary = generate_demo_world(out, size=size, seed=seed, progress=not quiet)
    counts = summary["counts"]
    if summary["skipped"]:
        click.echo(f"demo world already complete in {out} (size {size}, seed {seed}); "
                   "nothing to do")
        return
    click.echo(f"demo world ({size}, seed {seed}) written to {out} in {summary['seconds']} s")
    click.echo("  vcr:      " + _split_counts(counts["vcr"], "questions"))
    click.echo("  snli-ve:  " + _split_counts(counts["snli-ve"], "pairs"))
    click.echo("  vqa:      " + _split_counts(counts["vqa"], "questions")
               + f"; {counts['vqa']['answer_vocabulary']} answers in vqa/answers.txt")
    click.echo(f"  captions: {counts['captions']['captions']} captions of "
               f"{counts['captions']['images']} images")


def _split_counts(by_split: dict, unit: str) -> str:
    return ", ".join(f"{split} {c[unit]} {unit} / {c['images']} images"
                     for split, c in by_split.items() if isinstance(c, dict))
