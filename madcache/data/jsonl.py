"""Shared reading helpers for the readers: JSON lines with 1-based line numbers, the items of a
JSON file's list streamed one at a time, per-record error handling under `skip_bad`, and option
checking."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import ijson

from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.core.io import json_problem
from madcache.data.records import BadRecord

T = TypeVar("T")


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice (json keeps the last value without a word)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the key {key!r} appears twice in one object (JSON would keep the "
            "last value silently); keep one"
        )
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKeyError(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def parse_json(text: str) -> Any:
    """`json.loads` that refuses an object with a key twice (`DuplicateKeyError`)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """`(line number, record)` for each non-blank line; a malformed line (bad JSON, bytes that
    are not UTF-8, nesting deeper than Python parses) yields its DataError instead of raising,
    so the caller decides (raise, or skip under `skip_bad`)."""
    if not path.is_file():
        raise DataFileNotFoundError(
            f"annotation file not found: {path}; check --root and the split name", file=path
        )
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = parse_json(raw.decode("utf-8"))
            except json.JSONDecodeError as exc:
                yield (
                    number,
                    DataError(
                        f"malformed JSON ({exc.msg} at column {exc.colno}); fix or remove the line",
                        file=path,
                        line=number,
                    ),
                )
                continue
            except DuplicateKeyError as exc:
                yield number, DataError(str(exc), file=path, line=number, field=exc.key)
                continue
            except (UnicodeDecodeError, RecursionError) as exc:
                yield (
                    number,
                    DataError(
                        f"{json_problem(exc)}; fix or remove the line", file=path, line=number
                    ),
                )
                continue
            if not isinstance(record, dict):
                yield (
                    number,
                    DataError(
                        f"expected a JSON object, got {type(record).__name__}",
                        file=path,
                        line=number,
                    ),
                )
                continue
            if b"\\u0000" in raw and _holds_nul(record):
                yield (
                    number,
                    DataError(
                        "holds a NUL character (\\u0000), which no id or text "
                        "of a dataset has (a damaged file?); fix or remove the "
                        "line",
                        file=path,
                        line=number,
                    ),
                )
                continue
            yield number, record


def _holds_nul(value: Any) -> bool:
    """Whether a NUL character is in any string of a JSON value (keys included)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def load_json_file(path: Path) -> Any:
    """A whole JSON file's value; malformed JSON, bytes that are not UTF-8 or nesting deeper
    than Python parses raise a DataError naming the file and line."""
    raw = path.read_bytes()
    try:
        return parse_json(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON ({exc.msg})", file=path, line=exc.lineno) from None
    except DuplicateKeyError as exc:
        raise DataError(str(exc), file=path, field=exc.key) from None
    except UnicodeDecodeError as exc:
        raise DataError(
            json_problem(exc), file=path, line=raw[: exc.start].count(b"\n") + 1
        ) from None
    except RecursionError as exc:
        raise DataError(json_problem(exc), file=path) from None


def iter_json_list(path: Path, key: str, *, plain: bool = True) -> Iterator[Any]:
    """The items of the `key` list of the JSON object in `path`, parsed one at a time (ijson's
    C parser), so memory holds one item rather than the file. Refused as `load_json_file`
    refuses the file (malformed JSON, bytes that are not UTF-8, a key twice in one object), each
    when the parser reaches it, and a file that is not an object with a `key` list.
    `plain=False`: objects stay the parser's dict subclass (cheaper, for a caller that only
    reads their fields). Not noticed: `key` twice at the top (both lists are read)."""
    repeated: list[str] = []
    count = 0
    try:
        with path.open("rb") as handle:
            bounded = _DepthBound(handle, path)
            stream = ijson.items(
                bounded,
                f"{key}.item",
                map_type=_recording_repeats(repeated),
                use_float=True,
                buf_size=_DepthBound.CHUNK,
            )
            for item in stream:
                if repeated:
                    raise DataError(
                        str(DuplicateKeyError(repeated[0])), file=path, field=repeated[0]
                    )
                bounded.item_ended = True
                count += 1
                yield _plain(item, path) if plain else item
    except ijson.JSONError as exc:
        load_json_file(path)  # the whole parse names the line, as a whole read always did
        raise DataError(f"malformed JSON ({_first_line(exc)})", file=path) from None
    if count == 0:
        _whole_list(path, key)


class _DepthBound:
    """The file ijson reads, in chunks whose nesting is bounded before ijson sees them.

    ijson keeps the path of every open level as a string (memory grows with the square of the
    depth: a file of 100,000 "[" takes tens of GB), where `json` refuses nesting deeper than
    Python recurses (~1,000 levels). At the end of an item the depth is that of the list's
    items (2), and it grows by at most a chunk's "[" and "{" bytes; when that bound passes
    `LIMIT` (below json's limit, so every file json refuses is caught; in VQA's files it stays
    under ~500), the whole file is parsed once by `load_json_file`, which refuses it as before
    ("nested too deeply") or finds it fine and lifts the bound."""

    CHUNK = 16384
    LIMIT = 900

    def __init__(self, handle: Any, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.item_ended = False  # set by the reader: an item ended in the last chunk
        self.bound = 0  # of the depth at the end of the last chunk
        self.last_opens = 0
        self.checked = False

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        opens = chunk.count(b"[") + chunk.count(b"{")
        start = min(self.bound, 2 + self.last_opens) if self.item_ended else self.bound
        if start + opens > self.LIMIT and not self.checked:
            load_json_file(self.path)  # raises if the file is nested too deeply
            self.checked = True
        self.bound, self.last_opens, self.item_ended = start + opens, opens, False
        return chunk


def _recording_repeats(repeated: list[str]) -> type[dict]:
    """A dict type that notes a key set twice in `repeated` (the parser's C code cannot carry
    an exception raised while it builds an object)."""

    class Recording(dict):
        def __setitem__(self, key: str, value: Any) -> None:
            if key in self:
                repeated.append(key)
            dict.__setitem__(self, key, value)

    return Recording


def _plain(value: Any, path: Path) -> Any:
    """A parsed item with plain dicts; nesting deeper than Python recurses is a DataError, as
    a whole parse's is."""
    try:
        return _plain_value(value)
    except RecursionError as exc:
        raise DataError(json_problem(exc), file=path) from None


def _plain_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


def _first_line(exc: Exception) -> str:
    message = exc.args[0] if exc.args else exc
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message).splitlines()[0] if str(message) else type(exc).__name__


def _whole_list(path: Path, key: str) -> list[Any]:
    """The `key` list of a whole parse of `path`; a file that is not an object with a `key`
    list is a DataError naming the file and field."""
    data = load_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"expected an object with a '{key}' list", file=path, field=key)
    return data[key]


def bad_record(error: DataError) -> BadRecord:
    return BadRecord(
        file=error.file or "",
        line=error.line,
        field=error.field,
        record_id=error.record_id,
        reason=error.reason,
    )


def guarded(convert: Callable[[], T], skipped: list[BadRecord], skip_bad: bool) -> T | None:
    """`convert()`, or None with the error recorded in `skipped` when `skip_bad` is set."""
    try:
        return convert()
    except DataError as error:
        if not skip_bad:
            raise
        skipped.append(bad_record(error))
        return None


def check_options(
    dataset: str, options: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """`defaults` updated with `options`; an unknown option names the valid ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown {dataset} option(s) {', '.join(unknown)}. Valid options: "
            f"{', '.join(sorted(defaults))}"
        )
    return {**defaults, **options}


def as_bool(value: Any, name: str) -> bool:
    """A boolean option that may come from the command line as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"option {name} must be true or false, got {value!r}")


def split_file(root: Path, split: str, named: Mapping[str, str]) -> Path:
    """The annotation file of a split: a standard name (`named[split]`) or a relative `.jsonl`
    path under root."""
    from madcache.data.paths import safe_join

    if split in named:
        return root / named[split]
    if split.endswith(".jsonl"):
        return safe_join(root, split, field="split")
    raise ConfigError(
        f"unknown split {split!r}: use one of {', '.join(named)} or a .jsonl path "
        "relative to the root"
    )
