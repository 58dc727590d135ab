"""Where a cache's small files live: the manifest, per-shard commit records, claims, index parts.

`Store` is the one interface the cache code uses for them, kept to what an object store offers
(docs/cache-format.md, "Commit protocol"): whole-object reads and writes, *create only if absent*
(S3's conditional `If-None-Match: *`, obstore's `mode="create"`), listing a prefix, deleting. No
rename: correctness never depends on one. Keys are relative POSIX paths (`commits/00007.json`).

`LocalStore` implements it on a POSIX file system: writes go through a temporary file, fsync and
`os.replace`; `create` links the finished temporary file to its name, which fails if the name
exists. Claims (one writer per shard) are `flock` locks, which the kernel releases when their
process dies, so a killed writer never leaves a stale claim. `S3Store`
(madcache/cache/objectstore.py) implements claims as leases: a conditional create with an expiry.

Shards (many objects each) are addressed as `StoreKey`s (a store and a folder key) where the
store is not a local directory; `madcache.cache.location.open_location` maps a location string
to its store and shard root.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madcache.core import io


class Claim:
    """An exclusive claim on one key, held until `release` (or until its process dies).
    `on_release` undoes it (unlock a file, delete a lease) and runs once; `lost` says whether
    it was lost meanwhile (a lease that could not be renewed)."""

    def __init__(
        self, key: str, on_release: Callable[[], None], lost: Callable[[], bool] | None = None
    ) -> None:
        self.key = key
        self._on_release: Callable[[], None] | None = on_release
        self._lost = lost

    @property
    def lost(self) -> bool:
        return self._lost is not None and self._lost()

    def release(self) -> None:
        if self._on_release is not None:
            undo, self._on_release = self._on_release, None
            undo()

    @property
    def held(self) -> bool:
        return self._on_release is not None


class Store(ABC):
    """The small objects of one cache, addressed by relative keys.

    `renames` says whether a folder can be renamed atomically (a POSIX directory can, an
    object-store prefix cannot): the writer then stores a shard under a temporary name first.
    Correctness never depends on it (the commit record, written last, decides)."""

    renames: bool = False

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store is, as the user wrote it (for messages)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The whole object; `FileNotFoundError` if there is none."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object whole: a reader sees the old or the new bytes, never a mix."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if no object has that key; False (nothing written) if one has."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys directly under the folder `prefix`, sorted (hidden temporary names excluded)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (no error if it is absent)."""

    @abstractmethod
    def claim(self, key: str, *, wait: bool) -> Claim | None:
        """Take the exclusive claim `key`: None if another live writer holds it (`wait=False`),
        or block until it is free (`wait=True`)."""

    @abstractmethod
    def delete_tree(self, key: str) -> None:
        """Remove the object `key` and everything under the folder `key` (a shard)."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes of the object `key`, or of everything under the folder `key` ("" = all)."""

    @abstractmethod
    def zarr_store(self) -> Any:
        """A zarr store (or store-like) rooted at this store's root, for shards' arrays."""


class LocalStore(Store):
    """A `Store` on a local or shared POSIX file system (NFS, Lustre, ...)."""

    renames = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def url(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.path(key).parent.mkdir(parents=True, exist_ok=True)
        io.atomic_write_bytes(self.path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        self.path(key).parent.mkdir(parents=True, exist_ok=True)
        return io.atomic_create_bytes(self.path(key), data)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(
            f"{prefix.rstrip('/')}/{p.name}" for p in folder.iterdir() if not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def claim(self, key: str, *, wait: bool) -> Claim | None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None

        def unlock() -> None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

        return Claim(key, unlock)

    def delete_tree(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        """Bytes under `key`. Other ranks rename their temporary shards while this walks the
        folder: a file or folder gone mid-walk is skipped, not an error (os.walk ignores
        vanished folders; a vanished file counts 0)."""
        path = self.path(key)
        if path.is_file():
            return path.stat().st_size
        return sum(
            _size_or_zero(Path(folder) / name)
            for folder, _, names in os.walk(path)
            for name in names
        )

    def zarr_store(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class StoreKey:
    """A folder or object inside a `Store` that is not a local directory: what the shard
    backends get instead of a `Path` there. `/` and `name` behave like `Path`'s."""

    store: Store
    key: str = ""

    def __truediv__(self, name: str) -> StoreKey:
        return StoreKey(self.store, f"{self.key}/{name}" if self.key else name)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.store.url.rstrip('/')}/{self.key}" if self.key else self.store.url


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
