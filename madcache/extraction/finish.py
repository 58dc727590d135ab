"""`finish_extraction(path)`: the last step of an extraction, after every rank committed its shards.

It computes the split-level results that need every shard (SNLI-VE's k-means centres, from the
`similarity` arrays read back from all committed shards) and then `finish_cache` joins the index
and marks the cache complete. It needs no teacher: `madcache cache finish PATH` runs it on its own
(after a Slurm job array), and rank 0 runs it after a barrier under torchrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from madcache.core.errors import CacheError
from madcache.core.io import writing
from madcache.extraction.protocols import LogitProtocol, make_protocol


def finish_extraction(
    path: str | Path, *, task: LogitProtocol | None = None, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Finish the cache at `path`; returns its final manifest. `task` defaults to the manifest's
    protocol (`fingerprint.prompts.protocol`)."""
    from madcache.cache.manifest import read_manifest
    from madcache.cache.writer import finish_cache

    manifest = read_manifest(path)
    if task is None:
        task = recorded_protocol(manifest.get("fingerprint", {}).get("prompts", {}))
    with writing(
        path,
        error=CacheError,
        then="free space or fix the permissions, then rerun "
        "`madcache cache finish` (the committed shards are kept)",
    ):
        return finish_cache(path, extra=split_results(path, manifest, task), summary=summary)


def recorded_protocol(prompts: dict[str, Any]) -> LogitProtocol:
    """The task an extraction ran, rebuilt from its fingerprint's `prompts` part: the protocol
    and the relevance model's logit scale and bias (SNLI-VE's k-means logits use the scale)."""
    task = make_protocol(prompts.get("protocol") or "none")
    task.logit_scale = float(prompts.get("scale", task.logit_scale))
    task.logit_bias = float(prompts.get("bias", task.logit_bias))
    return task


def split_results(
    path: str | Path, manifest: dict[str, Any], task: LogitProtocol
) -> dict[str, Any]:
    """`task.finish` over the task arrays of every committed shard, in shard order."""
    if type(task).finish is LogitProtocol.finish or manifest.get("unavailable"):
        return {}
    from madcache.cache.backends import get_backend
    from madcache.cache.commits import read_commits
    from madcache.cache.location import open_location

    location = open_location(path)
    backend = get_backend(manifest.get("format", "zarr"))
    shard_arrays: list[dict[str, np.ndarray]] = []
    for index, record in sorted(read_commits(location.store).items()):
        names = [name for name in task.arrays if name in record["arrays"]]
        shard_arrays.append(backend.read(backend.shard_path(location.root, index), names))
    return task.finish(shard_arrays)
