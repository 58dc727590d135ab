"""What a dataset must provide, and the dataset registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from madcache.data.records import ReadResult
from madcache.core.registry import Registry


@runtime_checkable
class Dataset(Protocol):
    """A reader of one dataset's original files.

    `read` options (e.g. VCR's `modes` and `renderer`) must be JSON-serialisable: they decide the
    texts a teacher sees, so they are part of a cache's fingerprint.
    """

    name: str
    categories: tuple[str, ...]
    label_names: tuple[str, ...] | None

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        """The files whose bytes define this split (hashed into cache fingerprints); the same
        `options` as `read` (e.g. VCR `annotations=`, VQA `questions_file=`) pick the files."""
        ...

    def read(self, root: Path, split: str, *, skip_bad: bool = False,
             **options: Any) -> ReadResult:
        ...

    # Optional: `resolve_options(**options) -> dict`, the options with defaults filled in and
    # values normalised, so that spelling out a default does not change a cache fingerprint
    # (`madcache.cache.fingerprint.resolved_read_options`).


DATASETS: Registry[Dataset] = Registry("dataset")
