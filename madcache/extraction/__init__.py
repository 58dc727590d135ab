"""Extraction: read a split, run the teachers once, write every MAD target into a sharded,
resumable cache (docs/extraction.md). `madcache.extraction` re-exports the public API."""

_LAZY = {
    "ExtractConfig": "madcache.extraction.config",
    "TeacherSpec": "madcache.extraction.config",
    "extract": "madcache.extraction.run",
}


def __getattr__(name: str):
    """Import `run` (torch, the teachers) only when used: `madcache extract`'s flags need only
    the config."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'madcache.extraction' has no attribute {name!r}")


__all__ = list(_LAZY)
