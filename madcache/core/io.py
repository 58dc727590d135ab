"""Small file helpers every stage shares: atomic writes, JSON and weight files read with one-line
errors, output locations checked against inputs and dataset roots, file digests, the git commit,
byte counts for people.

Atomic = written to a temporary name in the same folder, then renamed over the target, so a
reader (or a rerun after a kill) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from madcache.core.errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    MadcacheError,
    OutputLocationError,
)

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_FILE_DIGESTS_LOCK = threading.Lock()


def atomic_write_bytes(path: str | Path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or pieces written in order) to `path` through a temporary file in
    the same folder and a rename."""
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


def _written_temp(path: Path, data: bytes | Iterable[bytes]) -> Path:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        with open(temp, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(
    path: str | Path,
    payload: Mapping[str, Any] | list,
    *,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Atomic JSON write (indented, keys in the given order, trailing newline)."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=default) + "\n")


def read_json(
    path: str | Path, *, error: type[MadcacheError] = CheckpointCorruptError, hint: str = ""
) -> Any:
    """A JSON file's value. A file that is not UTF-8 JSON (truncated, binary, nested deeper than
    Python parses) raises `error` naming the file, followed by `hint` (what to do)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise error(
            f"{path}: not a readable JSON file ({json_problem(exc)})"
            + (f"; {hint}" if hint else "")
        ) from None


def json_problem(exc: Exception) -> str:
    """What is wrong with a JSON text, in a few words (for one-line errors)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def load_weights(path: str | Path, *, what: str = "weights") -> dict[str, Any]:
    """A state dict from .safetensors, or any other file via `torch.load(weights_only=True)`
    (no pickled code runs). A missing file raises `CheckpointNotFoundError`, one that does not
    load (truncated, corrupt) `CheckpointCorruptError`, each naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} not found: {path}")
    with loading(path, what=what):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


@contextlib.contextmanager
def loading(path: str | Path, *, what: str) -> Iterator[None]:
    """Around the load of a weights file or folder (safetensors, torch.load, transformers'
    `from_pretrained`, open_clip): any failure that is not already a `MadcacheError` means the
    file is unreadable, and becomes one `CheckpointCorruptError` line naming `path`."""
    try:
        yield
    except MadcacheError:
        raise
    except Exception as exc:  # safetensors, pickle, zip, JSON, transformers' OSError alike
        raise CheckpointCorruptError(unreadable(path, exc, what=what)) from None


def unreadable(path: str | Path, exc: BaseException, *, what: str = "file") -> str:
    """The one-line message for a file that exists but does not load. A pickle that holds more
    than tensors and plain containers is named as such (torch's own refusal advises loading it
    with `weights_only=False`, which would run whatever code it holds: madcache never does)."""
    if "weights only load failed" in str(exc).lower() or type(exc).__name__ == "UnpicklingError":
        return (
            f"{path}: {what} file holds Python objects besides tensors, which madcache never "
            "unpickles (that could run code); save the state dict alone, e.g. "
            "torch.save(model.state_dict(), path) or safetensors"
        )
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    if any(sign in reason for sign in ARCHITECTURE_SIGNS):
        return (
            f"{path}: {what} file holds weights of another architecture or size ({reason}); "
            "check that the model name or config matches the checkpoint"
        )
    return f"{path}: {what} file is corrupt or truncated ({reason}); restore or recreate it"


# what loaders say when a readable file holds another model's weights (torch's load_state_dict,
# open_clip's position-embedding resizing), not a damaged file
ARCHITECTURE_SIGNS = (
    "size mismatch",
    "Missing key(s)",
    "Unexpected key(s)",
    "width changed",
    "Error(s) in loading state_dict",
)


# errors of the disk, not of madcache: shown as one line naming the path
DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)


def disk_problem(exc: OSError) -> str | None:
    """'disk full', 'read-only file system'... when `exc` is a disk error, else None."""
    if exc.errno not in DISK_ERRORS:
        return None
    return {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file larger than allowed (ulimit -f or the file system's limit)",
    }.get(exc.errno, (exc.strerror or str(exc)).lower())


@contextlib.contextmanager
def writing(path: str | Path, *, error: type[MadcacheError], then: str) -> Iterator[None]:
    """Turn a disk error (full, read-only, no permission) raised while writing `path` into
    `error`: one line naming the path, the problem and `then` (what to do, e.g. resume)."""
    try:
        yield
    except OSError as exc:
        problem = disk_problem(exc)
        if problem is None:
            raise
        raise error(f"cannot write {path}: {problem}; {then}") from None


# ----------------------------------------------------------------------------- output locations


def check_output_location(
    out: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    roots: Iterable[str | Path | None] = (),
    option: str = "--out",
    inside_root_ok: bool = False,
) -> None:
    """Refuse an output location that is, contains or lies inside one of the command's `inputs`
    (files or folders it reads), or lies inside a dataset root in `roots` (unless
    `inside_root_ok`, and even then never over an existing file), or contains a root (clearing
    the output would delete the dataset).
    The one check every command that writes files runs before it writes anything. An object-store
    URL (`s3://...`) is never a local input or dataset root: there is nothing to check."""
    if "://" in str(out):
        return
    target = _resolved(out)
    for given in (p for p in inputs if p is not None):
        source = _resolved(given)
        if target == source or _within(source, target) or _within(target, source):
            raise OutputLocationError(
                f"{option} {out} would overwrite the input {given}; choose another output location"
            )
    for given in (r for r in roots if r is not None):
        root = _resolved(given)
        if _within(root, target) or target == root:
            raise OutputLocationError(
                f"{option} {out} contains the dataset root {given}; "
                "choose an output location outside it"
            )
        if _within(target, root) and not inside_root_ok:
            raise OutputLocationError(
                f"{option} {out} is inside the dataset root {given}; "
                "madcache never writes into a dataset unless asked: "
                "choose a location outside it"
            )
        if _within(target, root) and target.exists():
            raise OutputLocationError(
                f"{option} {out} would overwrite a file of the dataset "
                f"root {given}; choose a new name"
            )


def refuse_foreign_file(
    path: str | Path, *, ours: Callable[[Path], bool], what: str, option: str = "--out"
) -> None:
    """Refuse to replace an existing file that madcache did not write as `what` (`ours(path)`
    says whether it did): nothing a user gave is overwritten. A file madcache wrote there
    before is replaced, as a rerun expects."""
    path = Path(path)
    if path.is_dir():
        raise OutputLocationError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not _is_ours(path, ours):
        raise OutputLocationError(
            f"{option} {path} already exists and is not a {what} madcache "
            "wrote; choose a new name or delete it yourself"
        )


def _is_ours(path: Path, ours: Callable[[Path], bool]) -> bool:
    try:
        return bool(ours(path))
    except (OSError, ValueError):  # unreadable, or not what `ours` can parse
        return False


def starts_with(prefix: bytes) -> Callable[[Path], bool]:
    """`ours` for `refuse_foreign_file`: the file's first bytes are `prefix`."""

    def check(path: Path) -> bool:
        with open(path, "rb") as handle:
            return handle.read(len(prefix)) == prefix

    return check


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _within(inner: Path, outer: Path) -> bool:
    """Whether `inner` lies strictly inside the folder `outer`."""
    return inner != outer and outer in inner.parents


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


def human_bytes(n: float) -> str:
    """A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`, `12.0 GiB` (GiB the largest)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def git_commit() -> str | None:
    """The commit of the madcache checkout this code runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
