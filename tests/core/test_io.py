import hashlib
import json

import pytest

from madcache.core import io


def test_file_sha256_streams_and_notices_changes(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 10_000)
    assert io.file_sha256(path, chunk_size=999) == hashlib.sha256(b"x" * 10_000).hexdigest()
    path.write_bytes(b"y" * 10_001)
    assert io.file_sha256(path) == hashlib.sha256(b"y" * 10_001).hexdigest()
    with pytest.raises(FileNotFoundError):
        io.file_sha256(tmp_path / "absent")


def test_write_json_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    io.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        io.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_human_bytes_names_the_largest_unit_below_1024():
    assert [io.human_bytes(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**30, 2**42)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
        "4096.0 GiB",
    ]
