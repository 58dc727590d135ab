"""Extraction: read a split, run the teachers once, write every MAD target into a sharded,
resumable cache (docs/extraction.md). `madcache.extraction` re-exports the public API."""

from madcache.extraction.config import ExtractConfig, TeacherSpec
from madcache.extraction.run import extract

__all__ = ["ExtractConfig", "TeacherSpec", "extract"]
