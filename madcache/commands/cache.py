"""`madcache cache info PATH [--json]`, `madcache cache verify PATH`,
`madcache cache finish PATH`."""

from __future__ import annotations

import json
from typing import Any

import click

from madcache.core.io import human_bytes


@click.group()
def cache() -> None:
    """Inspect and check teacher-target caches."""


@cache.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: str, as_json: bool) -> None:
    """What a cache holds: counts, size, dims, arrays, fingerprint, state."""
    from madcache.cache.reader import open_cache
    from madcache.method.methods import unavailable_methods

    summary = open_cache(path, allow_incomplete=True, check=False).info()
    summary["unavailable_methods"] = unavailable_methods(summary["unavailable"])
    if as_json:
        click.echo(json.dumps(summary, indent=1, sort_keys=True))
    else:
        click.echo(format_info(summary))


@cache.command()
@click.argument("path", type=click.Path())
def verify(path: str) -> None:
    """Check every array's checksum and shape, the shard list and the index (exit 1 on
    problems)."""
    from madcache.cache.reader import open_cache
    from madcache.cache.verify import verify_cache

    problems = verify_cache(path)
    if problems:
        for problem in problems:
            click.echo(f"PROBLEM: {problem}")
        click.echo(f"{len(problems)} problem(s) in {path}", err=True)
        raise SystemExit(1)
    summary = open_cache(path).info()
    click.echo(
        f"OK {path}: {summary['examples']} examples, {summary['images']} images, "
        f"{summary['texts']} texts, {summary['words']} words in {summary['shards']} "
        f"shards ({human_bytes(summary['bytes'])})"
    )


@cache.command()
@click.argument("path", type=click.Path())
def finish(path: str) -> None:
    """Complete a cache whose shards were extracted by several processes (a Slurm array,
    --rank/--world-size): check that every planned shard is committed, compute the split-level
    results (SNLI-VE k-means centres), join the index, mark the cache complete."""
    from madcache.extraction.finish import finish_extraction

    manifest = finish_extraction(path)
    writers = sorted(
        {
            (e["writer"]["world_size"], e["writer"]["host"])
            for e in manifest["shards"]
            if "writer" in e
        }
    )
    click.echo(
        f"finished {path}: {manifest['totals']['examples']} examples in "
        f"{len(manifest['shards'])} shards, written by "
        + (", ".join(f"{w} rank(s) on {h}" for w, h in writers) or "an earlier version")
    )


def format_info(summary: dict[str, Any]) -> str:
    rows = [
        ("path", summary["path"]),
        ("dataset / split", f"{summary['dataset']} / {summary['split']}"),
        ("format", f"{summary['format']} (version {summary['format_version']})"),
        ("state", summary["state"]),
        ("created", summary["created"]),
        ("examples", summary["examples"]),
        ("images", summary["images"]),
        ("texts", summary["texts"]),
        ("words", summary["words"]),
        ("choices per example", summary["num_choices"]),
        ("shards", summary["shards"]),
        ("size on disk", human_bytes(summary["bytes"])),
        ("dims", ", ".join(f"{k}={v}" for k, v in summary["dims"].items())),
        ("fingerprint", summary["fingerprint_digest"]),
    ]
    writers = [w for w in summary.get("writers", []) if w["rank"] is not None]
    if writers:
        rows.append(
            (
                "written by",
                "; ".join(
                    f"rank {w['rank']}/{w['world_size']} on {w['host']}: {w['shards']} shard(s)"
                    for w in writers
                ),
            )
        )
    if summary.get("precision"):
        rows.append(
            (
                "precision",
                f"{summary['precision']['device']}/{summary['precision']['compute_dtype']}",
            )
        )
    if summary.get("unavailable"):
        rows.append(("not computed", ", ".join(summary["unavailable"])))
        rows += [
            (f"cannot run: {name}", why)
            for name, why in summary.get("unavailable_methods", {}).items()
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if summary["arrays"]:
        lines.append("arrays:")
        lines += [
            f"  {name:<{width}}{spec['dtype']:<9} [n{_trailing(spec['row_shape'])}]"
            for name, spec in summary["arrays"].items()
        ]
    return "\n".join(lines)


def _trailing(row_shape: list[int]) -> str:
    """`, 512, 2` for a row shape [512, 2]: the dims after an array's row count."""
    return "".join(f", {d}" for d in row_shape)
