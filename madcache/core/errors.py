"""The errors madcache raises on purpose. Each message names the file/line/field and what to do.

The CLI turns any `MadcacheError` into a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations


class MadcacheError(Exception):
    """Base class: a problem the user can act on."""


class DataError(MadcacheError, ValueError):
    """A dataset file is malformed. Carries where: file, line (1-based) and field."""

    def __init__(
        self,
        message: str,
        *,
        file: object = None,
        line: int | None = None,
        field: str | None = None,
        record_id: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.record_id = record_id
        self.reason = message
        where = []
        if self.file is not None:
            where.append(self.file + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        if record_id is not None:
            where.append(f"id {record_id}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A dataset file (annotations, image, metadata) does not exist."""


class UnsafePathError(DataError):
    """A path in a dataset file escapes the dataset root."""


class PickleRefusedError(DataError):
    """A data file holds an object array (a pickle): madcache never unpickles."""


class UnknownNameError(MadcacheError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(MadcacheError):
    """A plugin's entry point (another package's registry entry) failed to load."""


class ConfigError(MadcacheError, ValueError):
    """A config file or option is invalid (unknown key, wrong type, bad value)."""


class ConfigValueError(ConfigError):
    """One setting has a value of the wrong type or out of its range. `key` is its dotted name
    (`train.lr`, `seeds[1]`), `where` the file or option it came from ("p.toml: ")."""

    def __init__(self, key: str, problem: str, *, where: str = "") -> None:
        self.key, self.problem, self.where = key, problem, where
        super().__init__(f"{where}{key}: {problem}")


class CheckpointNotFoundError(MadcacheError, FileNotFoundError):
    """A teacher/student checkpoint is missing; the message says which file to provide."""


class CheckpointCorruptError(MadcacheError):
    """A weights, checkpoint or run file exists but cannot be read, or its bytes changed since
    it was written (checksum); the message names the file."""


class RunDirectoryError(MadcacheError):
    """A run directory cannot be written as asked: it holds another run (without --resume or
    --overwrite), its recorded settings differ from this one's, or the disk refused a write."""


class OutputLocationError(MadcacheError):
    """An output location would overwrite a command's own input or a dataset file, or lies
    inside a dataset root."""


class CacheError(MadcacheError):
    """A teacher-target cache is unusable."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No cache at the given path."""


class CacheCorruptError(CacheError):
    """A cache failed verification (checksum, shape, missing rows)."""


class FingerprintMismatchError(CacheError):
    """A cache was built for other teachers/data/settings. `differences` lists what differs."""

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        self.differences = differences or []
        super().__init__(message)


class MissingTargetError(CacheError, KeyError):
    """A method needs a target the cache does not hold (e.g. MAD without a relevance model)."""

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteLossError(MadcacheError, FloatingPointError):
    """A training step's loss is NaN or infinite; the run stops before applying it."""
