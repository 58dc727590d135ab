"""Safe path handling: no dataset path may escape its root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from madcache.core.errors import UnsafePathError


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
    root_path = Path(root).resolve()
    joined = root_path.joinpath(*rel.parts)
    resolved = joined.resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise UnsafePathError(
            f"path {relative!r} resolves outside the dataset root {str(root_path)!r} (symlink?)",
            file=file,
            line=line,
            field=field,
        )
    return joined
