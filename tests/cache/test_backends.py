"""One shared suite for every storage backend (zarr's `StoreTests` pattern)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from madcache.cache.backends import Backend, Hdf5Backend, MemoryBackend, ZarrBackend, get_backend
from madcache.core.errors import UnknownNameError


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "image_feat": rng.normal(size=(4, 7)).astype(np.float16),
        "logits/iqa": rng.normal(size=(3, 4)).astype(np.float32),
        "logits/ia": rng.normal(size=(3, 4)).astype(np.float32),
        "word_offsets": np.array([0, 2, 2, 5], dtype=np.int64),
        "word_span": np.arange(10, dtype=np.int32).reshape(5, 2),
        "word_truncated": np.array([True, False, False, True, False]),
        "example_id": np.array(["a:qa", "ünïcode ✓", ""], dtype=str),
        "text_key": np.array(["x" * 40, "y"], dtype=object),
        "empty_feat": np.zeros((0, 3), dtype=np.float16),
        "empty_str": np.zeros(0, dtype="<U1"),
    }


class BackendTests:
    """Subclass per backend; `make_backend` returns a fresh backend."""

    def make_backend(self) -> Backend:
        raise NotImplementedError

    @pytest.fixture
    def backend(self) -> Backend:
        return self.make_backend()

    def test_round_trip_values_dtypes_and_names(self, backend: Backend, tmp_path: Path):
        arrays = sample_arrays()
        path = backend.shard_path(tmp_path, 0)
        backend.write(path, arrays)
        back = backend.read(path)
        assert sorted(back) == sorted(arrays) == backend.names(path)
        for name, original in arrays.items():
            if original.dtype.kind in "UO":
                assert back[name].dtype.kind == "U"
                assert back[name].tolist() == original.tolist()
            else:
                assert back[name].dtype == original.dtype, name
                np.testing.assert_array_equal(back[name], original)

    def test_read_subset(self, backend: Backend, tmp_path: Path):
        path = backend.shard_path(tmp_path, 3)
        backend.write(path, sample_arrays())
        back = backend.read(path, ["logits/ia", "example_id"])
        assert sorted(back) == ["example_id", "logits/ia"]

    def test_read_rows_equals_whole_reads_across_chunks(
        self, backend: Backend, tmp_path: Path, monkeypatch
    ):
        """Sparse, dense, empty and all-row selections (runs across chunk edges, 3 rows per
        Zarr chunk) equal indexing the whole array; bool, int and fp16 keep their dtype."""
        from madcache.cache import backends

        monkeypatch.setattr(backends, "MAX_CHUNK_BYTES", 3 * 4 * 2)
        rng = np.random.default_rng(0)
        arrays = {
            "feat": rng.normal(size=(11, 4)).astype(np.float16),
            "flag": rng.random(11) > 0.5,
            "rows": np.arange(22, dtype=np.int64) * 7,
            "ids": np.array([f"e{i}" for i in range(11)]),
        }
        path = backend.shard_path(tmp_path, 0)
        backend.write(path, arrays)
        for rows in ([0, 1, 2, 3, 7, 10], [5], [], [2, 3, 4, 5, 6, 8, 9, 10], None):
            wanted = {n: None if rows is None else np.array(rows, dtype=np.int64) for n in arrays}
            got = backend.read_rows(path, wanted)
            for name, array in arrays.items():
                expected = array if rows is None else array[np.array(rows, dtype=np.int64)]
                assert got[name].dtype.kind == expected.dtype.kind, name
                assert got[name].tolist() == expected.tolist(), (name, rows)

    def test_write_refuses_existing_shard(self, backend: Backend, tmp_path: Path):
        path = backend.shard_path(tmp_path, 0)
        backend.write(path, {"a": np.zeros(2)})
        with pytest.raises(Exception):  # noqa: B017 (each backend raises its library's error)
            backend.write(path, {"a": np.ones(2)})

    def test_rename_remove_and_listing(self, backend: Backend, tmp_path: Path):
        temp = backend.temp_path(tmp_path, 2)
        backend.write(temp, {"a": np.arange(3)})
        backend.write(backend.shard_path(tmp_path, 0), {"a": np.arange(2)})
        assert backend.temp_paths(tmp_path) == [temp]
        assert sorted(backend.shards_present(tmp_path)) == [0]
        backend.rename(temp, backend.shard_path(tmp_path, 2))
        assert sorted(backend.shards_present(tmp_path)) == [0, 2]
        assert backend.temp_paths(tmp_path) == []
        np.testing.assert_array_equal(
            backend.read(backend.shard_path(tmp_path, 2))["a"], np.arange(3)
        )
        backend.remove(backend.shard_path(tmp_path, 0))
        assert not backend.exists(backend.shard_path(tmp_path, 0))
        assert sorted(backend.shards_present(tmp_path)) == [2]
        assert backend.nbytes(backend.shard_path(tmp_path, 2)) > 0


class TestZarrBackend(BackendTests):
    def make_backend(self) -> Backend:
        return ZarrBackend()

    def test_fp16_stays_fp16_uncompressed(self, tmp_path: Path):
        import json

        backend = self.make_backend()
        path = backend.shard_path(tmp_path, 0)
        backend.write(path, {"image_feat": np.ones((4, 8), np.float16)})
        meta = json.loads((path / "image_feat" / "zarr.json").read_text())
        assert meta["data_type"] == "float16"
        assert [c["name"] for c in meta["codecs"]] == ["bytes"]


class TestHdf5Backend(BackendTests):
    def make_backend(self) -> Backend:
        return Hdf5Backend()


class TestMemoryBackend(BackendTests):
    def make_backend(self) -> Backend:
        return MemoryBackend()


def test_unknown_format_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="hdf5, memory, zarr"):
        get_backend("parquet")
