"""Safe path handling: no dataset path may escape its root."""

from __future__ import annotations

import functools
import os
from pathlib import Path, PurePosixPath

from madcache.core.errors import UnsafePathError


@functools.lru_cache(maxsize=65536)
def _resolved_dir(path: str) -> Path:
    """`Path(path).resolve()`, once per directory and process: a dataset's records name their
    files in a few thousand directories, and resolving every component of every file's path
    (a system call each) was a third of a full VCR read. Only the file's own name is looked at
    anew each time (`safe_join`: one lstat, and a full resolve when it is a symlink)."""
    return Path(path).resolve()


def safe_join(
    root: str | os.PathLike,
    relative: str,
    *,
    file: object = None,
    line: int | None = None,
    field: str | None = None,
) -> Path:
    """`root / relative`, refusing absolute paths, `..` escapes and symlinks that leave `root`."""
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    if rel.is_absolute() or any(part == ".." for part in rel.parts) or str(relative).strip() == "":
        raise UnsafePathError(
            f"path {relative!r} escapes the dataset root {str(root)!r}; paths must be relative "
            "and stay inside the root",
            file=file,
            line=line,
            field=field,
        )
    root_path = _resolved_dir(os.path.abspath(root))  # absolute: the memo outlives a chdir
    joined = root_path.joinpath(*rel.parts)
    resolved = _resolved_dir(os.fspath(joined.parent)) / joined.name
    if resolved.is_symlink():
        resolved = resolved.resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise UnsafePathError(
            f"path {relative!r} resolves outside the dataset root {str(root_path)!r} (symlink?)",
            file=file,
            line=line,
            field=field,
        )
    return joined
