"""Public entry point of extraction (the code lives in `madcache/extraction/`)."""

from madcache.extraction import ExtractConfig, TeacherSpec, extract

__all__ = ["ExtractConfig", "TeacherSpec", "extract"]
