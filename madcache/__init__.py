"""madcache: Multimodal Adaptive Distillation with a teacher-target cache.

Data flows one way: dataset -> teacher -> cache -> trainer -> report.
"""

import os

# Same command, same machine, same numbers (docs/guarantees.md): MKL and OpenMP may otherwise use
# fewer threads than asked for, and a thread count decides how reductions are split. Effective
# when madcache is imported before torch (the `madcache` command always is).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")

__version__ = "0.1.0"

# The notebook API (docs/notebook.md): `import madcache` is enough to open a cache, iterate a
# split's targets and compute the distillation terms. Imported on first use, so that importing
# madcache stays cheap and comes before torch.
_EXPORTS = {
    "open_cache": "madcache.cache.reader",
    "CacheDataset": "madcache.train.dataset",
    "CacheStream": "madcache.train.dataset",
    "CacheBatch": "madcache.train.dataset",
    "collate": "madcache.train.dataset",
    "get_method": "madcache.method.methods",
    "vision_term": "madcache.method.losses",
    "text_term": "madcache.method.losses",
    "word_term": "madcache.method.losses",
    "confidence_weights": "madcache.method.losses",
    "distillation_loss": "madcache.method.losses",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'madcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
