"""Cache fingerprints: what a cache's values depend on, as a nested dict of named parts.

A fingerprint is plain JSON (teachers, dataset, text_rendering, selection, format_version, ...).
Two caches hold the same values iff their fingerprints are equal; `diff_fingerprints` says
which dotted keys differ, so an error can tell the user *what* changed (a checkpoint, a dataset
file, a read option) rather than just "mismatch".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from madcache.core import io
from madcache.core.errors import DataFileNotFoundError

_SHORT = 12


def to_json(obj: Any) -> Any:
    """`obj` as plain JSON values (tuples -> lists, Paths -> str, numpy scalars -> numbers)."""
    return json.loads(canonical_json(obj))


def canonical_json(obj: Any) -> str:
    """Sorted-key JSON; numpy values and paths are converted, anything else must be JSON."""
    return json.dumps(obj, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON-serialisable in a fingerprint/manifest: {type(value).__name__}")


def digest(obj: Any) -> str:
    """sha256 hex of the canonical JSON of `obj` (equal dicts -> equal digests)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a dataset/weights file; a missing file is a `DataFileNotFoundError`."""
    try:
        return io.file_sha256(path)
    except FileNotFoundError:
        raise DataFileNotFoundError(
            "file not found (needed for the cache fingerprint)", file=path
        ) from None


def dataset_fingerprint(
    dataset: str, root: str | Path, split: str, read_options: dict[str, Any] | None
) -> dict[str, Any]:
    """The dataset part of a fingerprint: the split's annotation files (relative path -> sha256)
    and the read options that decide the texts (e.g. VCR `renderer`, `modes`).

    The root itself is left out: the same files under another directory give the same cache.
    The options are resolved (defaults filled in, values normalised), so a default spelled out
    on the command line gives the same fingerprint as leaving it out.
    """
    from madcache.data import DATASETS

    root = Path(root)
    files = DATASETS.get(dataset).annotation_files(root, split, **(read_options or {}))
    return {
        "name": dataset,
        "split": split,
        "files": {_relative(Path(f), root): file_sha256(f) for f in files},
        "read_options": resolved_read_options(dataset, read_options),
    }


def resolved_read_options(dataset: str, read_options: dict[str, Any] | None) -> dict[str, Any]:
    """The dataset's options with defaults filled in and values normalised
    (`Dataset.resolve_options`), as plain JSON."""
    from madcache.data import DATASETS

    return to_json(DATASETS.get(dataset).resolve_options(**dict(read_options or {})))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def diff_fingerprints(
    expected: dict[str, Any], actual: dict[str, Any], *, prefix: str = "fingerprint"
) -> list[str]:
    """Human-readable differences, one per dotted key: `prefix.a.b: 'exp..' != 'act..'`.

    Missing keys show as `<missing>`; long strings (digests) are shortened.
    """
    return _diff(to_json(expected), to_json(actual), prefix)


_MISSING = object()


def _diff(expected: Any, actual: Any, key: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for name in sorted(set(expected) | set(actual), key=str):
            out += _diff(expected.get(name, _MISSING), actual.get(name, _MISSING), f"{key}.{name}")
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            line
            for i, (e, a) in enumerate(zip(expected, actual))
            for line in _diff(e, a, f"{key}[{i}]")
        ]
    if expected == actual:
        return []
    return [f"{key}: {_show(expected)} != {_show(actual)}"]


def _show(value: Any) -> str:
    if value is _MISSING:
        return "<missing>"
    if isinstance(value, str) and len(value) > _SHORT + 2:
        return repr(value[:_SHORT] + "..")
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
