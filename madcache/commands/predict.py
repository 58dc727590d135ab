"""`madcache predict`: a trained run's predictions on a split, in the dataset's official
submission format (VCR leaderboard CSV, VQA v2 results JSON, SNLI-VE JSONL)."""

from __future__ import annotations

import click


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run directory written by `madcache train`.")
@click.option("--split", default="test", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The file to write (.csv for VCR, .json for VQA, .jsonl for SNLI-VE).")
@click.option("--root", help="Dataset root, if it moved since training.")
@click.option("--regions", help="Region store holding the split's images (region students).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def predict(run_dir: str, split: str, out: str, root: str | None, regions: str | None,
            force: bool) -> None:
    """Write a run's predictions on SPLIT as a submission file (docs/evaluation.md)."""
    from madcache.evaluation.predict import write_predictions

    summary = write_predictions(run_dir, split=split, out=out, root=root, regions=regions,
                                force=force)
    click.echo(f"{summary['dataset']} {summary['split']}: {summary['rows']} rows -> "
               f"{summary['out']}")
