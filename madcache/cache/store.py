"""Where a cache's small files live: the manifest, per-shard commit records, claims, index parts.

`Store` is the one interface the cache code uses for them, kept to what an object store offers
(docs/cache-format.md, "Commit protocol"): whole-object reads and writes, *create only if absent*
(S3's conditional `If-None-Match: *`, obstore's `mode="create"`), listing a prefix, deleting. No
rename: correctness never depends on one. Keys are relative POSIX paths (`commits/00007.json`).

`LocalStore` implements it on a POSIX file system: writes go through a temporary file, fsync and
`os.replace`; `create` links the finished temporary file to its name, which fails if the name
exists. Claims (one writer per shard) are `flock` locks, which the kernel releases when their
process dies, so a killed writer never leaves a stale claim. An object-store backend would
implement claims as leases (a conditional create with an expiry).
"""

from __future__ import annotations

import fcntl
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO

from madcache.core import io


class Claim:
    """An exclusive claim on one key, held until `release` (or until its process dies)."""

    def __init__(self, key: str, handle: IO[bytes]) -> None:
        self.key = key
        self._handle: IO[bytes] | None = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None


class Store(ABC):
    """The small objects of one cache, addressed by relative keys."""

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


class LocalStore(Store):
    """A `Store` on a local or shared POSIX file system (NFS, Lustre, ...)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

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
        return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in folder.iterdir()
                      if not p.name.startswith("."))

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
        return Claim(key, handle)


def as_store(root: str | Path | Store) -> Store:
    return root if isinstance(root, Store) else LocalStore(root)
