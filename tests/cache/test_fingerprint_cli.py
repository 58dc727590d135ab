"""Fingerprint helpers and the `madcache cache info/verify` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from madcache.cache import fingerprint as fp
from madcache.cli import cli


def test_digest_is_order_insensitive_and_content_sensitive():
    assert fp.digest({"a": 1, "b": [1, 2]}) == fp.digest({"b": (1, 2), "a": 1})
    assert fp.digest({"a": 1}) != fp.digest({"a": 2})
    assert len(fp.digest({})) == 64


def test_diff_fingerprints_dotted_keys():
    expected = {
        "teachers": {"vision": {"sha": "a" * 64}},
        "selection": {"m": 2},
        "dataset": {"files": ["x", "y"]},
    }
    actual = {
        "teachers": {"vision": {"sha": "b" * 64}},
        "selection": {"m": 2, "top": 20},
        "dataset": {"files": ["x", "z"]},
    }
    assert fp.diff_fingerprints(expected, actual) == [
        "fingerprint.dataset.files[1]: 'y' != 'z'",
        "fingerprint.selection.top: <missing> != 20",
        "fingerprint.teachers.vision.sha: 'aaaaaaaaaaaa..' != 'bbbbbbbbbbbb..'",
    ]
    assert fp.diff_fingerprints(expected, expected) == []


def test_file_sha256_names_a_missing_dataset_file(tmp_path):
    from madcache.core.errors import DataFileNotFoundError

    with pytest.raises(DataFileNotFoundError, match="absent"):
        fp.file_sha256(tmp_path / "absent")


def test_dataset_fingerprint_hashes_annotation_files(tmp_path, monkeypatch):
    from madcache.data import DATASETS

    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "train.jsonl").write_text('{"id": 1}\n')

    class Fake:  # the two members of a Dataset spec a fingerprint uses
        def annotation_files(self, root: Path, split: str, **options) -> list[Path]:
            return [root / "ann" / f"{split}.jsonl"]

        def resolve_options(self, **options):
            return options

    monkeypatch.setattr(DATASETS, "get", lambda name: Fake())
    part = fp.dataset_fingerprint("fake", tmp_path, "train", {"modes": ("qa",), "renderer": "x"})
    assert part == {
        "name": "fake",
        "split": "train",
        "files": {"ann/train.jsonl": fp.file_sha256(tmp_path / "ann" / "train.jsonl")},
        "read_options": {"modes": ["qa"], "renderer": "x"},
    }
    (tmp_path / "ann" / "train.jsonl").write_text('{"id": 22}\n')
    changed = fp.dataset_fingerprint("fake", tmp_path, "train", {"modes": ["qa"], "renderer": "x"})
    assert fp.diff_fingerprints(part, changed)[0].startswith("fingerprint.files.ann/train.jsonl")


def test_cli_info_and_verify(tmp_path, world, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt="hdf5")
    runner = CliRunner()
    result = runner.invoke(cli, ["cache", "info", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "examples" in result.output and "23" in result.output and "hdf5" in result.output
    result = runner.invoke(cli, ["cache", "info", str(tmp_path / "c"), "--json"])
    assert json.loads(result.output)["examples"] == 23
    result = runner.invoke(cli, ["cache", "verify", str(tmp_path / "c")])
    assert result.exit_code == 0 and result.output.startswith("OK ")
    assert "23 examples" in result.output


def test_cli_verify_reports_problems(tmp_path, world, cache_helpers):
    cache_helpers.write_world(tmp_path / "c", world, fmt="zarr")
    import shutil

    shutil.rmtree(tmp_path / "c" / "shard-00001.zarr")
    result = CliRunner().invoke(cli, ["cache", "verify", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "PROBLEM: shard 1 is listed in the manifest but missing on disk" in result.output


def test_cli_info_missing_cache_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["cache", "info", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no cache at" in result.output
    assert "Traceback" not in result.output
