"""Small file helpers every stage shares: atomic writes, file digests, the git commit.

Atomic = written to a temporary name in the same folder, then renamed over the target, so a
reader (or a rerun after a kill) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_FILE_DIGESTS_LOCK = threading.Lock()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    temp = _written_temp(path, data)
    try:
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_create_bytes(path: str | Path, data: bytes) -> bool:
    """Write `data` to `path` only if nothing is there yet (atomic, also between processes):
    False, and nothing written, if `path` exists. The whole file appears at once: a temporary
    file is hard-linked to the name, which fails if the name is taken."""
    path = Path(path)
    temp = _written_temp(path, data)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    return True


def _written_temp(path: Path, data: bytes) -> Path:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Mapping[str, Any] | list, *,
               default: Callable[[Any], Any] | None = None) -> None:
    """Atomic JSON write (indented, keys in the given order, trailing newline)."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=default) + "\n")


def file_sha256(path: str | Path, *, chunk_size: int = 4 * 2**20) -> str:
    """sha256 of a file, streamed; remembered per (path, size, mtime) within the process
    (checkpoints and dataset files are large and hashed more than once)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _FILE_DIGESTS_LOCK:
        if key in _FILE_DIGESTS:
            return _FILE_DIGESTS[key]
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            sha.update(block)
    with _FILE_DIGESTS_LOCK:
        _FILE_DIGESTS[key] = sha.hexdigest()
    return sha.hexdigest()


def git_commit() -> str | None:
    """The commit of the madcache checkout this code runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
