"""Safe path handling: no dataset path may escape its root."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from madcache.core.errors import UnsafePathError


@functools.lru_cache(maxsize=65536)
def _resolved_dir(path: str) -> str:
    """`os.path.realpath(path)`, once per directory and process: a dataset's records name their
    files in a few thousand directories, and resolving every component of every file's path
    (a system call each) was a third of a full VCR read. Only the file's own name is looked at
    anew each time (`safe_join`: one lstat, and a full resolve when it is a symlink)."""
    return os.path.realpath(path)


def safe_join(
    root: str | os.PathLike,
    relative: str,
    *,
    file: object = None,
    line: int | None = None,
    field: str | None = None,
) -> Path:
    """`root / relative`, refusing absolute paths, `..` escapes and symlinks that leave `root`.
    String operations, not `pathlib` (a full VCR read calls this twice per record)."""
    text = str(relative).replace("\\", "/")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if text.startswith("/") or ".." in parts or text.strip() == "":
        raise UnsafePathError(
            f"path {relative!r} escapes the dataset root {str(root)!r}; paths must be relative "
            "and stay inside the root",
            file=file,
            line=line,
            field=field,
        )
    root_path = _resolved_dir(os.path.abspath(root))  # absolute: the memo outlives a chdir
    joined = os.path.join(root_path, *parts)
    parent, name = os.path.split(joined)
    resolved = os.path.join(_resolved_dir(parent), name) if parts else root_path
    if os.path.islink(resolved):
        resolved = os.path.realpath(resolved)
    inside = root_path.rstrip(os.sep) + os.sep
    if resolved != root_path and not resolved.startswith(inside):
        raise UnsafePathError(
            f"path {relative!r} resolves outside the dataset root {str(root_path)!r} (symlink?)",
            file=file,
            line=line,
            field=field,
        )
    return Path(joined)
