"""`madcache demo search`: choose the demo's training settings on the baseline alone."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("search")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="The demo folder of `madcache demo run` (its world and "
                                      "region store are reused; results go to OUT/search).")
@click.option("--spec", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The search spec (default: madcache/demo/search.toml).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Training runs at once.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_search(out: Path, spec: Path | None, jobs: int, quiet: bool) -> None:
    """Baseline-only search of the demo's training settings on a dev split held out of the
    demo's train data (never val, never MD/MAD). Prints the table; writes search.json,
    search.md and curves.png under OUT/search."""
    from madcache.demo.run import PIPELINE
    from madcache.demo.search import SEARCH_FILE, load_search, run_search, search_markdown

    summary = run_search(out, pipeline=PIPELINE, spec=load_search(spec or SEARCH_FILE),
                         jobs=jobs, progress=not quiet,
                         log=lambda line: click.echo(line, err=True))
    click.echo(search_markdown(summary))
    click.echo(f"curves: {out / 'search' / 'curves.png'}")
