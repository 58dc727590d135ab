"""Read-only access to a cache: `open_cache(path) -> Cache`, `Cache.load_targets(ids)`.

A reader never writes, locks or repairs anything, so any number of processes (one per seed)
can read one cache at once. Training targets are loaded in one pass, shard by shard in order,
each needed array read whole (sequential I/O) and then gathered in memory: fetching rows one by
one from Zarr costs ~0.35 ms per chunk touched (docs/cache-format.md, "Why whole shards").
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from madcache.cache import index as cache_index
from madcache.cache.backends import Backend, get_backend
from madcache.cache.commits import read_commits
from madcache.cache.fingerprint import diff_fingerprints, resolved_read_options
from madcache.cache.manifest import (FORMAT_VERSION, STATE_COMPLETE, fingerprint_digest,
                                     read_manifest)
from madcache.cache.location import as_store, open_location
from madcache.cache.store import Store, StoreKey
from madcache.cache.verify import open_problems, read_index_or_none
from madcache.cache.targets import kmeans_logits, Targets, WordTargets
from madcache.core.errors import CacheCorruptError, CacheError, FingerprintMismatchError, \
    MadcacheError, MissingTargetError

WORD_FIELDS = {"feat": ("word_feat", np.float32), "span": ("word_span", np.int32),
               "vr": ("word_vr", np.float32), "yake": ("word_yake", np.float32),
               "score": ("word_score", np.float32), "truncated": ("word_truncated", bool)}
ROW_INDEXES = {"example_image": "images", "example_texts": "texts"}
PER_EXAMPLE = ("example_image", "example_texts", "candidates", "similarity")


def open_cache(path: str | Path, *, allow_incomplete: bool = False,
               check: bool = True) -> "Cache":
    """Open the cache at `path` read-only. `CacheNotFoundError` if there is none; an
    incomplete cache (extraction still running or killed) only with `allow_incomplete`.

    A complete cache is checked cheaply before use (no shard is read): shards listed and on
    disk, one precision, an index whose rows and ids match what the manifest recorded per shard.
    A damaged one raises `CacheCorruptError` telling to run `madcache cache verify`
    (`check=False` skips this, for `madcache cache info` on a damaged cache).

    `path` is a directory or an object-store URL (`s3://bucket/prefix`)."""
    location = open_location(path)
    root = location.root
    manifest = read_manifest(location.store)
    backend = get_backend(manifest.get("format", "zarr"))
    if manifest.get("state") != STATE_COMPLETE:
        if not allow_incomplete:
            raise CacheError(_incomplete_message(root, manifest))
        return Cache(root, manifest, backend)
    if not check:
        return Cache(root, manifest, backend)
    table = read_index_or_none(location.store)
    problems = open_problems(root, manifest, backend, table)
    if problems:
        raise CacheCorruptError(f"the cache at {root} is damaged: {'; '.join(problems[:3])}"
                                f"{' ...' if len(problems) > 3 else ''}. Run `madcache cache "
                                f"verify {root}` for a full check; rerunning the extraction "
                                "command redoes missing shards, --force rebuilds it")
    return Cache(root, manifest, backend, index=table)


def _incomplete_message(root: Path | StoreKey, manifest: dict[str, Any]) -> str:
    done = len(read_commits(as_store(root)))
    planned = manifest.get("num_shards", "?")
    if done == planned:
        return (f"the cache at {root} has all {done} shards committed but was not finished: "
                f"run `madcache cache finish {root}`")
    return (f"the cache at {root} is incomplete (state {manifest.get('state')!r}, {done}/"
            f"{planned} shards committed): resume the extraction with the same command (any "
            "number of ranks), or open it with allow_incomplete=True")


class Cache:
    """An opened cache. Cheap to create; shards are read only when asked."""

    def __init__(self, path: Path | StoreKey, manifest: dict[str, Any], backend: Backend,
                 index=None) -> None:
        self.path = path                      # a directory, or the root of an object store
        self.store: Store = as_store(path)
        self.manifest = manifest
        self.backend = backend
        self._index = index
        self._locations: dict[str, tuple[int, int]] | None = None
        self._shards: list[dict[str, Any]] | None = None

    @property
    def format(self) -> str:
        return self.backend.name

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    @property
    def num_choices(self) -> int:
        return int(self.manifest["num_choices"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The manifest's shard list; while writing, the shards committed so far."""
        if self._shards is None:
            entries = self.manifest.get("shards", []) if self.complete \
                else read_commits(self.store).values()
            self._shards = sorted(entries, key=lambda e: int(e["index"]))
        return self._shards

    @property
    def complete(self) -> bool:
        return self.manifest.get("state") == STATE_COMPLETE

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, format={self.format!r}, shards={len(self.shards)})"

    # ------------------------------------------------------------------ index

    def index(self):
        """`index.parquet` as a pyarrow Table (example_id, shard, row, image_id, ...)."""
        if self._index is None:
            self._index = cache_index.read_index(self.store) if self.complete else \
                cache_index.read_parts(self.store, [int(e["index"]) for e in self.shards])
        return self._index

    def example_ids(self) -> list[str]:
        return self.index().column("example_id").to_pylist()

    def _location_map(self) -> dict[str, tuple[int, int]]:
        if self._locations is None:
            table = self.index()
            ids = table.column("example_id").to_pylist()
            shards = table.column("shard").to_numpy().tolist()
            rows = table.column("row").to_numpy().tolist()
            self._locations = dict(zip(ids, zip(shards, rows)))
        return self._locations

    def _locate(self, example_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        where = self._location_map()
        missing = [eid for eid in example_ids if eid not in where]
        if missing:
            shown = ", ".join(repr(e) for e in missing[:5])
            raise MissingTargetError(
                f"{len(missing)} of {len(example_ids)} example ids are not in the cache at "
                f"{self.path} (e.g. {shown}): was it extracted for this dataset split (and "
                "without --limit)?")
        pairs = np.array([where[eid] for eid in example_ids], dtype=np.int64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    # ------------------------------------------------------------------ arrays

    def _shard_path(self, entry: dict[str, Any]) -> Path | StoreKey:
        return self.path / entry["name"]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored array, concatenated over shards in order; `example_image`,
        `example_texts` and `word_offsets` rebased to global rows (notebooks, tests)."""
        parts = [self.backend.read(self._shard_path(e)) for e in self.shards]
        if not parts:
            return {}
        out = {}
        for name in parts[0]:
            pieces = [_rebased(name, p, self.shards[:i]) for i, p in enumerate(parts)]
            if name == "word_offsets":
                pieces = [pieces[0]] + [p[1:] for p in pieces[1:]]
            out[name] = np.concatenate(pieces)
        return out

    def load_targets(self, example_ids: Sequence[str], *, progress: bool = False) -> Targets:
        """Teacher targets of `example_ids`, rows in that order (see `Targets`).

        One pass over the needed shards in order. Per shard, the needed rows of each array are
        read in one batched, sorted request (whole arrays when most rows are needed; never one
        read per row), then gathered in memory. fp16 features come back as float32. A cache of
        another format version is refused (`check_format_version`)."""
        check_format_version(self.manifest, self.path)
        ids = list(example_ids)
        shard_of, row_of = self._locate(ids)
        entries = {int(e["index"]): e for e in self.shards}
        needed = sorted(set(shard_of.tolist()))
        template = entries[needed[0]] if needed else (self.shards[0] if self.shards else None)
        out = _Assembler(len(ids), self.num_choices, template)
        for shard in _progress(needed, progress):
            if set(_target_names(entries[shard])) != set(_target_names(template)):
                raise CacheCorruptError(f"shard {shard} of {self.path} holds other arrays than "
                                        f"shard {template['index']}: run `madcache cache verify`")
            positions = np.flatnonzero(shard_of == shard)
            read = partial(self.backend.read_rows, self._shard_path(entries[shard]))
            try:
                stored_ids = out.add_shard(positions, row_of[positions], read)
            except Exception as exc:  # a damaged or replaced shard can fail in any decoder
                raise CacheCorruptError(
                    f"shard {shard} of {self.path} does not hold what the manifest describes "
                    f"({type(exc).__name__}: {exc}): run `madcache cache verify {self.path}`") \
                    from None
            _check_ids(self.path, shard, [ids[p] for p in positions], stored_ids)
        return out.targets(ids, self.manifest)

    # ------------------------------------------------------------------ checks and info

    def check_compatible(self, expected_fingerprint_parts: dict[str, Any]) -> None:
        """Raise `FingerprintMismatchError` if any given part (e.g. `{"dataset": ...}`)
        differs from this cache's fingerprint; parts not given are not compared. Dataset read
        options are compared resolved on both sides (a default spelled out is no difference)."""
        actual = {key: _resolved(key, self.fingerprint[key]) for key in expected_fingerprint_parts
                  if key in self.fingerprint}
        expected = {key: _resolved(key, part) for key, part in expected_fingerprint_parts.items()}
        differences = diff_fingerprints(expected, actual)
        if differences:
            raise FingerprintMismatchError(
                f"the cache at {self.path} was built for something else (requested != cache):"
                "\n  " + "\n  ".join(differences) + "\nRe-extract for this data (`madcache "
                "extract ... --out NEW_DIR`) or pass a matching --cache.", differences)

    def info(self) -> dict[str, Any]:
        """A summary for `madcache cache info` (counts, size, dims, fingerprint, state)."""
        totals = {key: sum(int(e.get(key, 0)) for e in self.shards)
                  for key in ("examples", "images", "texts", "words")}
        return {
            "path": str(self.path), "format": self.format,
            "format_version": self.manifest.get("format_version"),
            "state": self.manifest.get("state"), "created": self.manifest.get("created"),
            "dataset": self.manifest.get("dataset"), "split": self.manifest.get("split"),
            "num_choices": self.manifest.get("num_choices"), **totals,
            "shards": len(self.shards), "bytes": self._disk_bytes(),
            "dims": self.manifest.get("dims", {}),
            "arrays": _array_summary(self.shards),
            "fingerprint_digest": self.manifest.get("fingerprint_digest")
            or fingerprint_digest(self.manifest),
            "summary": self.manifest.get("summary", {}),
            "unavailable": list(self.manifest.get("unavailable") or []),
            "writers": _writers(self.shards),
            "precision": self.manifest.get("precision"),
        }

    def _disk_bytes(self) -> int:
        files = self.store.size("")
        if self.format == "memory":
            files += sum(self.backend.nbytes(self._shard_path(e)) for e in self.shards)
        return files


def check_format_version(manifest: dict[str, Any], path: Path | StoreKey) -> None:
    """Refuse teacher targets written by another format version: their values mean something
    else (docs/cache-format.md, "Format versions"), so they must not be reused silently."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(
            f"the cache at {path} has format version {version}, but this madcache reads version "
            f"{FORMAT_VERSION}: its stored values were computed differently (docs/cache-format.md,"
            " \"Format versions\"). Re-extract it: `madcache extract ... --out NEW_DIR`.")


def _kmeans_scale(manifest: dict[str, Any]) -> float:
    scale = manifest.get("extra", {}).get("kmeans_scale")
    if scale is None:
        raise CacheCorruptError("the manifest has extra.kmeans_centres but no "
                                "extra.kmeans_scale: re-extract the cache")
    return float(scale)


def _rebased(name: str, arrays: dict[str, np.ndarray], before: list[dict[str, Any]]) -> np.ndarray:
    array = arrays[name]
    if name in ROW_INDEXES:
        return array + sum(int(e[ROW_INDEXES[name]]) for e in before)
    if name == "word_offsets":
        return array + sum(int(e["words"]) for e in before)
    return array


def _resolved(key: str, part: Any) -> Any:
    """A fingerprint part with a dataset's read options resolved (caches from before options
    were resolved at extraction compare equal to the same read spelled another way)."""
    if key != "dataset" or not isinstance(part, dict) or "read_options" not in part:
        return part
    from madcache.data import DATASETS

    if part.get("name") not in DATASETS:
        return part
    try:
        options = resolved_read_options(part["name"], part["read_options"])
    except MadcacheError:   # options this version no longer knows: compare as written
        return part
    return {**part, "read_options": options}


def _check_ids(path: Path | StoreKey, shard: int, wanted: list[str], stored: np.ndarray) -> None:
    """The rows the index pointed at hold the ids asked for (else targets would be misaligned)."""
    wrong = [i for i, (w, s) in enumerate(zip(wanted, stored.tolist())) if w != s]
    if wrong:
        raise CacheCorruptError(
            f"the index of {path} points {len(wrong)} id(s) of shard {shard} at rows holding "
            f"other examples (e.g. {wanted[wrong[0]]!r} -> {stored[wrong[0]]!r}): run "
            f"`madcache cache verify {path}`")


def _target_names(entry: dict[str, Any]) -> list[str]:
    """The arrays `load_targets` needs (not the string arrays: the index has the ids)."""
    wanted = {"example_image", "example_texts", "image_feat", "text_eos", "word_offsets",
              "candidates", "similarity", *(name for name, _ in WORD_FIELDS.values())}
    return [name for name in entry["arrays"] if name in wanted or name.startswith("logits/")]


def _writers(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Who wrote the shards: one entry per (rank, world size, host) with its shard count."""
    counts: dict[tuple, int] = {}
    for entry in shards:
        writer = entry.get("writer", {})
        key = (writer.get("rank"), writer.get("world_size"), writer.get("host"))
        counts[key] = counts.get(key, 0) + 1
    return [{"rank": r, "world_size": w, "host": h, "shards": n}
            for (r, w, h), n in sorted(counts.items(), key=lambda kv: str(kv[0]))]


def _array_summary(shards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if not shards:
        return {}
    return {name: {"dtype": rec["dtype"], "row_shape": rec["shape"][1:]}
            for name, rec in shards[0]["arrays"].items()}


def _progress(shards: list[int], enabled: bool) -> Iterable[int]:
    if not enabled:
        return shards
    from tqdm import tqdm

    return tqdm(shards, desc="loading targets", unit="shard")


class _RowPlan:
    """Which image, text and word rows of a shard the requested examples need (sorted,
    unique, as the store wants them), and how to map them back to requested order."""

    def __init__(self, per_example: dict[str, np.ndarray], inverse: np.ndarray,
                 names: set[str]) -> None:
        self.names = names
        self.image_rows = self.image_inverse = None
        if "image_feat" in names:
            self.image_rows, self.image_inverse = np.unique(
                per_example["example_image"][inverse], return_inverse=True)
        self.text_rows = self.text_inverse = self.word_rows = None
        if "example_texts" in per_example:
            texts = per_example["example_texts"][inverse].reshape(-1)   # n*C scored texts
            self.text_rows, self.text_inverse = np.unique(texts, return_inverse=True)
            self.text_inverse = self.text_inverse.reshape(-1)
        if "word_offsets" in per_example and self.text_rows is not None:
            offsets = per_example["word_offsets"]
            self.text_counts = offsets[self.text_rows + 1] - offsets[self.text_rows]
            self.text_compact_start = np.concatenate(
                [[0], np.cumsum(self.text_counts)[:-1]]).astype(np.int64)
            # sorted, since the texts' word ranges are disjoint and in order
            self.word_rows = ragged_index(offsets[self.text_rows], self.text_counts)

    def requests(self) -> dict[str, np.ndarray]:
        wanted = {}
        if self.image_rows is not None:
            wanted["image_feat"] = self.image_rows
        if self.text_rows is not None and "text_eos" in self.names:
            wanted["text_eos"] = self.text_rows
        if self.word_rows is not None:
            wanted.update({name: self.word_rows for name, _ in WORD_FIELDS.values()
                           if name in self.names})
        return wanted


def ragged_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + n)` for each (s, n), without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(np.asarray(starts, dtype=np.int64) - first, counts) + np.arange(total)


class _Assembler:
    """Collects each shard's gathered rows and scatters them into request order."""

    def __init__(self, n: int, num_choices: int, template: dict[str, Any] | None) -> None:
        self.n = n
        self.c = num_choices
        self.records = template["arrays"] if template else {}
        self.rows: dict[str, np.ndarray] = {}
        self.word_parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self.counts = np.zeros(n * num_choices, dtype=np.int64)

    def _out(self, name: str, trailing: Sequence[int], dtype) -> np.ndarray:
        if name not in self.rows:
            self.rows[name] = np.zeros((self.n, *trailing), dtype=dtype)
        return self.rows[name]

    def add_shard(self, positions: np.ndarray, rows: np.ndarray, read) -> np.ndarray:
        """Gather one shard's rows with two batched reads: the per-example arrays (and
        `word_offsets`), then the image, text and word rows they point at.
        `read({name: sorted unique rows | None})` reads from the shard. Returns the
        `example_id`s stored at `rows`, for the caller to check against the index."""
        names = set(_target_names({"arrays": self.records}))
        example_rows, inverse = np.unique(rows, return_inverse=True)
        first = {n: example_rows for n in names if n in PER_EXAMPLE or n.startswith("logits/")}
        first.update({"word_offsets": None} if "word_offsets" in names else {})
        first["example_id"] = example_rows
        per_example = read(first)
        for name, array in per_example.items():
            if name.startswith("logits/") or name in ("candidates", "similarity"):
                dtype = np.int64 if name == "candidates" else np.float32
                self._out(name, array.shape[1:], dtype)[positions] = array[inverse]
        plan = _RowPlan(per_example, inverse, names)
        stored = read(plan.requests())
        if "image_feat" in stored:
            feat = stored["image_feat"][plan.image_inverse]
            self._out("image", feat.shape[1:], np.float32)[positions] = feat
        if "text_eos" in stored:
            eos = stored["text_eos"][plan.text_inverse].reshape(len(positions), self.c, -1)
            self._out("text_eos", eos.shape[1:], np.float32)[positions] = eos
        if plan.word_rows is not None:
            counts = plan.text_counts[plan.text_inverse]
            take = ragged_index(plan.text_compact_start[plan.text_inverse], counts)
            targets = (positions[:, None] * self.c + np.arange(self.c)).reshape(-1)
            self.counts[targets] = counts
            words = {n: a[take] for n, a in stored.items() if n.startswith("word_")}
            self.word_parts.append((targets, counts, words))
        return per_example["example_id"][inverse]

    def _words(self) -> WordTargets | None:
        if "word_offsets" not in self.records:
            return None
        offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        fields = {}
        for field, (name, dtype) in WORD_FIELDS.items():
            trailing = self.records[name]["shape"][1:] if name in self.records else \
                ([2] if field == "span" else [])
            fill = np.nan if dtype is np.float32 and field != "feat" else 0
            out = np.full((int(offsets[-1]), *trailing), fill, dtype=dtype)
            for targets, counts, words in self.word_parts:
                if name in words:
                    out[ragged_index(offsets[targets], counts)] = words[name]
            fields[field] = out
        return WordTargets(offsets=offsets, **fields)

    def _ensure(self, name: str, dtype, trailing: Sequence[int] | None = None) -> np.ndarray | None:
        """The output for `name`, also when no row was requested (shapes from the manifest)."""
        if name in self.rows:
            return self.rows[name]
        source = {"image": "image_feat", "text_eos": "text_eos"}.get(name, name)
        if source not in self.records:
            return None
        shape = trailing if trailing is not None else self.records[source]["shape"][1:]
        return np.zeros((self.n, *shape), dtype=dtype)

    def targets(self, ids: list[str], manifest: dict[str, Any]) -> Targets:
        logits = {name[len("logits/"):]: self._ensure(name, np.float32)
                  for name in self.records if name.startswith("logits/")}
        similarity = self._ensure("similarity", np.float32)
        centres = manifest.get("extra", {}).get("kmeans_centres")
        if similarity is not None and centres:
            logits["kmeans"] = kmeans_logits(similarity, centres, _kmeans_scale(manifest))
        eos_shape = None
        if "text_eos" in self.records:
            eos_shape = [self.c, *self.records["text_eos"]["shape"][1:]]
        return Targets(example_ids=ids, num_choices=self.c,
                       image=self._ensure("image", np.float32),
                       text_eos=self._ensure("text_eos", np.float32, eos_shape),
                       words=self._words(), logits=logits,
                       candidates=self._ensure("candidates", np.int64),
                       default_logits=_default_logits(manifest, logits))


def _default_logits(manifest: dict[str, Any], logits: dict[str, np.ndarray]) -> str | None:
    name = manifest["default_logits"] if "default_logits" in manifest \
        else manifest.get("settings", {}).get("default_logits")
    return name if name in logits else None
