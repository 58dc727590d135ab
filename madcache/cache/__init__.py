"""Teacher-target cache: sharded Zarr (default) or HDF5 store, manifest, index, reader.

Writing: `CacheWriter.open(path, manifest=..., format="zarr")` -> `write_shard` per shard ->
`finish`. Reading: `open_cache(path).load_targets(ids) -> Targets`. Checking:
`verify_cache(path)`. The on-disk contract is docs/cache-format.md.
"""

from madcache.cache.targets import Targets, WordTargets

_LAZY = {
    "CacheWriter": "madcache.cache.writer",
    "FORMAT_VERSION": "madcache.cache.manifest",
    "Cache": "madcache.cache.reader",
    "open_cache": "madcache.cache.reader",
    "verify_cache": "madcache.cache.verify",
    "digest": "madcache.cache.fingerprint",
    "dataset_fingerprint": "madcache.cache.fingerprint",
    "diff_fingerprints": "madcache.cache.fingerprint",
    "file_sha256": "madcache.cache.fingerprint",
}


def __getattr__(name: str):
    """Import the store modules only when used: `Targets` alone stays numpy-only."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'madcache.cache' has no attribute {name!r}")


__all__ = ["Targets", "WordTargets", *_LAZY]
