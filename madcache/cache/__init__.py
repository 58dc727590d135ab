"""Teacher-target cache: sharded Zarr (default) or HDF5 store, manifest, index, reader."""

from madcache.cache.targets import Targets, WordTargets

__all__ = ["Targets", "WordTargets"]
