"""Where a cache or region store lives: a local path, or an object-store URL (`s3://bucket/prefix`).

`open_location` is the one place that turns what a user wrote (`--out`, `--cache`,
`--regions`, `cache verify PATH`, a pipeline's `cache = ...`) into the `Store` of the cache's
small objects and the root its shards are addressed under: a `Path` for a local directory
(everything works as on any POSIX file system), a `StoreKey` in an object store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from madcache.cache.store import LocalStore, Store, StoreKey
from madcache.core.errors import CacheError

SCHEMES = ("s3",)
# what an opened object store depends on besides its URL (a change opens it again)
ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_OPENED: dict[tuple, Store] = {}


@dataclass(frozen=True)
class Location:
    """A cache location: the store of its small objects, the root of its shards."""

    store: Store
    root: Path | StoreKey

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def local(self) -> bool:
        return isinstance(self.root, Path)


def is_url(location: object) -> bool:
    """True for `scheme://...` (an object store), False for a local path."""
    return isinstance(location, str) and "://" in location


def open_location(location: str | Path | Store | StoreKey | Location) -> Location:
    """The location of a cache given as a path, a URL, a store or a shard root. An object
    store is opened (and checked with one request) once per process and URL; a missing
    bucket, refused credentials or an unreachable endpoint raise one `CacheError` line."""
    if isinstance(location, Location):
        return location
    if isinstance(location, StoreKey):
        return Location(location.store, location)
    if isinstance(location, LocalStore):
        return Location(location, location.root)
    if isinstance(location, Store):
        return Location(location, StoreKey(location))
    if not is_url(location):
        path = Path(location).expanduser()
        return Location(LocalStore(path), path)
    url = str(location).rstrip("/")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise CacheError(
            f"{url}: object stores are given as s3://BUCKET/PREFIX ("
            f"{scheme}:// is not supported); or give a local path"
        )
    key = (url, *(os.environ.get(name) for name in ENVIRONMENT))
    if key not in _OPENED:
        from madcache.cache.objectstore import S3Store

        store = S3Store(url)
        store.check()
        _OPENED[key] = store
    return Location(_OPENED[key], StoreKey(_OPENED[key]))


def as_store(root: str | Path | Store | StoreKey) -> Store:
    """The store of the cache at `root` (a path, a URL, a store, or a shard root)."""
    return open_location(root).store
