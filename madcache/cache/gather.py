"""The gather engine of `Cache.load_targets`: teacher targets of many example ids, read from the
shards that hold them and put in the order asked.

One pass over the needed shards in order. Per shard, two batched requests with sorted unique
rows (the backend reads whole arrays when most rows are needed; never one read per row): first
the per-example arrays of the requested rows and `word_offsets`, then the image, text and word
rows those point at (`_RowPlan`). `_Assembler` scatters each shard's rows into request order and
builds the `Targets`. Fetching rows one by one would cost ~0.35 ms per Zarr chunk touched
(docs/cache-format.md, "Why not row by row").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache.store import StoreKey
from madcache.cache.targets import Targets, WordTargets, kmeans_logits
from madcache.core.errors import CacheCorruptError

WORD_FIELDS = {
    "feat": ("word_feat", np.float32),
    "span": ("word_span", np.int32),
    "vr": ("word_vr", np.float32),
    "yake": ("word_yake", np.float32),
    "score": ("word_score", np.float32),
    "truncated": ("word_truncated", bool),
}
PER_EXAMPLE = ("example_image", "example_texts", "candidates", "similarity")

# (shard entry of the manifest, {array name: sorted unique rows | None for all}) -> the arrays
ReadRows = Callable[[dict[str, Any], dict[str, np.ndarray | None]], dict[str, np.ndarray]]


# the stored arrays each kind of target (`Method.needs`) is read from. Token selection ranks
# words by the combined score alone, so "words" leaves out the two scores it combines
# (`word_vr`, `word_yake`: NaN in a load with `needs`, read by a load of everything)
ARRAYS_OF_NEED = {
    "image": ("image_feat", "example_image"),
    "text_eos": ("text_eos", "example_texts"),
    "words": (
        "example_texts",
        "word_offsets",
        *(name for name, _ in WORD_FIELDS.values() if name not in ("word_vr", "word_yake")),
    ),
    "logits": ("logits/", "candidates", "similarity"),
}


def arrays_for(needs: Iterable[str] | None, names: Iterable[str]) -> set[str]:
    """Of the stored array `names`, those the target kinds `needs` read (None: all)."""
    names = set(names)
    if needs is None:
        return names
    wanted = [a for need in needs for a in ARRAYS_OF_NEED[need]]
    return {
        n for n in names if any(n == a or (a.endswith("/") and n.startswith(a)) for a in wanted)
    }


# the words whose features to read, as sorted flat word indices, chosen from every word's
# offsets, spans and scores (`WordTargets` with no features yet; token selection, MAD.md)
ChooseWords = Callable[[WordTargets], np.ndarray]


def gather_targets(
    ids: list[str],
    shard_of: np.ndarray,
    row_of: np.ndarray,
    *,
    shards: list[dict[str, Any]],
    read_rows: ReadRows,
    manifest: dict[str, Any],
    where: Path | StoreKey,
    progress: bool = False,
    needs: Iterable[str] | None = None,
    choose_words: ChooseWords | None = None,
    arrays: Iterable[str] | None = None,
    check_ids: bool = True,
) -> Targets:
    """The targets of `ids`, whose rows are `row_of` in the shards `shard_of` (indexes into the
    manifest entries `shards`), in the order of `ids`; with `needs` (`Method.needs`: "image",
    "text_eos", "words", "logits"), only the arrays those read (the others come back None);
    with `choose_words`, only the chosen words' features (`WordTargets.feat_rows`).
    `where` (the cache) names the cache in errors: a shard holding other arrays, rows a decoder
    cannot read or ids the index did not promise are a `CacheCorruptError`. `arrays` (names)
    narrows the arrays read further. `check_ids=False` reads no `example_id`: for an index
    already checked against the manifest's sha256 of each shard's ids (`open_cache`), the ids
    of the rows it points at are the ones asked for."""
    entries = {int(e["index"]): e for e in shards}
    needed = sorted(set(shard_of.tolist()))
    template = entries[needed[0]] if needed else (shards[0] if shards else None)
    read = None
    if template is not None:
        keep = arrays_for(needs, template["arrays"]) | {"example_id"}
        keep &= set(template["arrays"]) if arrays is None else set(arrays) | {"example_id"}
        read = {**template, "arrays": {n: r for n, r in template["arrays"].items() if n in keep}}
    out = _Assembler(
        len(ids),
        int(manifest["num_choices"]),
        read,
        defer_feat=choose_words is not None,
        check_ids=check_ids,
    )
    for shard in _progress(needed, progress):
        if set(target_names(entries[shard])) != set(target_names(template)):
            raise CacheCorruptError(
                f"shard {shard} of {where} holds other arrays than "
                f"shard {template['index']}: run `madcache cache verify`"
            )
        positions = np.flatnonzero(shard_of == shard)
        entry = entries[shard]
        try:
            stored_ids = out.add_shard(
                positions, row_of[positions], functools.partial(read_rows, entry)
            )
        except CacheCorruptError:  # already says which shard and what
            raise
        except Exception as exc:  # a damaged or replaced shard can fail in any decoder
            raise CacheCorruptError(
                f"shard {shard} of {where} does not hold what the manifest describes "
                f"({type(exc).__name__}: {exc}): run `madcache cache verify {where}`"
            ) from None
        if check_ids:
            _check_ids(where, shard, [ids[p] for p in positions], stored_ids)
    targets = out.targets(ids, manifest)
    if choose_words is not None and targets.words is not None:
        chosen = np.unique(np.asarray(choose_words(targets.words), dtype=np.int64))
        try:
            targets.words.feat = out.chosen_features(chosen)
        except CacheCorruptError:
            raise
        except Exception as exc:
            raise CacheCorruptError(
                f"the word features of {where} cannot be read ("
                f"{type(exc).__name__}: {exc}): run `madcache cache verify "
                f"{where}`"
            ) from None
        targets.words.feat_rows = chosen
    return targets


def ragged_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + n)` for each (s, n), without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(np.asarray(starts, dtype=np.int64) - first, counts) + np.arange(total)


def _kmeans_scale(manifest: dict[str, Any]) -> float:
    scale = manifest.get("extra", {}).get("kmeans_scale")
    if scale is None:
        raise CacheCorruptError(
            "the manifest has extra.kmeans_centres but no extra.kmeans_scale: re-extract the cache"
        )
    return float(scale)


def _check_ids(path: Path | StoreKey, shard: int, wanted: list[str], stored: np.ndarray) -> None:
    """The rows the index pointed at hold the ids asked for (else targets would be misaligned)."""
    wrong = [i for i, (w, s) in enumerate(zip(wanted, stored.tolist())) if w != s]
    if wrong:
        raise CacheCorruptError(
            f"the index of {path} points {len(wrong)} id(s) of shard {shard} at rows holding "
            f"other examples (e.g. {wanted[wrong[0]]!r} -> {stored[wrong[0]]!r}): run "
            f"`madcache cache verify {path}`"
        )


def target_names(entry: dict[str, Any]) -> list[str]:
    """The arrays `load_targets` needs (not the string arrays: the index has the ids)."""
    wanted = {
        "example_image",
        "example_texts",
        "image_feat",
        "text_eos",
        "word_offsets",
        "candidates",
        "similarity",
        *(name for name, _ in WORD_FIELDS.values()),
    }
    return [name for name in entry["arrays"] if name in wanted or name.startswith("logits/")]


def _progress(shards: list[int], enabled: bool) -> Iterable[int]:
    if not enabled:
        return shards
    from tqdm import tqdm

    return tqdm(shards, desc="loading targets", unit="shard")


def _offsets_at(example_texts: np.ndarray, read) -> np.ndarray:
    """`word_offsets` with only the entries the texts `example_texts` need read (the others 0:
    a sparse subset reads a few entries, not the shard's whole array)."""
    texts = np.unique(example_texts)
    at = np.unique(np.concatenate([texts, texts + 1]))
    offsets = np.zeros(int(at[-1]) + 1 if len(at) else 0, dtype=np.int64)
    offsets[at] = read({"word_offsets": at})["word_offsets"]
    return offsets


class _RowPlan:
    """Which image, text and word rows of a shard the requested examples need (sorted,
    unique, as the store wants them), and how to map them back to requested order."""

    def __init__(
        self,
        per_example: dict[str, np.ndarray],
        inverse: np.ndarray,
        names: set[str],
        defer_feat: bool = False,
    ) -> None:
        self.names = names - {"word_feat"} if defer_feat else names
        self.image_rows = self.image_inverse = None
        if "image_feat" in names:
            self.image_rows, self.image_inverse = np.unique(
                per_example["example_image"][inverse], return_inverse=True
            )
        self.text_rows = self.text_inverse = self.word_rows = None
        if "example_texts" in per_example:
            texts = per_example["example_texts"][inverse].reshape(-1)  # n*C scored texts
            self.text_rows, self.text_inverse = np.unique(texts, return_inverse=True)
            self.text_inverse = self.text_inverse.reshape(-1)
        if "word_offsets" in per_example and self.text_rows is not None:
            offsets = per_example["word_offsets"]
            self.text_counts = offsets[self.text_rows + 1] - offsets[self.text_rows]
            self.text_compact_start = np.concatenate(
                [[0], np.cumsum(self.text_counts)[:-1]]
            ).astype(np.int64)
            # sorted, since the texts' word ranges are disjoint and in order
            self.word_rows = ragged_index(offsets[self.text_rows], self.text_counts)

    def requests(self) -> dict[str, np.ndarray]:
        wanted = {}
        if self.image_rows is not None:
            wanted["image_feat"] = self.image_rows
        if self.text_rows is not None and "text_eos" in self.names:
            wanted["text_eos"] = self.text_rows
        if self.word_rows is not None:
            wanted.update(
                {name: self.word_rows for name, _ in WORD_FIELDS.values() if name in self.names}
            )
        return wanted


class _Assembler:
    """Collects each shard's gathered rows and scatters them into request order."""

    def __init__(
        self,
        n: int,
        num_choices: int,
        template: dict[str, Any] | None,
        defer_feat: bool = False,
        check_ids: bool = True,
    ) -> None:
        self.defer_feat = defer_feat  # word features read later, only the chosen ones
        self.check_ids = check_ids
        self.n = n
        self.c = num_choices
        self.records = template["arrays"] if template else {}
        self.rows: dict[str, np.ndarray] = {}
        self.word_parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self.counts = np.zeros(n * num_choices, dtype=np.int64)
        self.word_sources: list[tuple[Callable, np.ndarray]] = []  # (shard reader, shard rows)
        self.offsets: np.ndarray | None = None

    def _out(self, name: str, trailing: Sequence[int], dtype) -> np.ndarray:
        if name not in self.rows:
            self.rows[name] = np.zeros((self.n, *trailing), dtype=dtype)
        return self.rows[name]

    def add_shard(self, positions: np.ndarray, rows: np.ndarray, read) -> np.ndarray:
        """Gather one shard's rows with batched reads: the per-example arrays, the entries of
        `word_offsets` their texts need, then the image, text and word rows they point at.
        `read({name: sorted unique rows | None})` reads from the shard. Returns the
        `example_id`s stored at `rows`, for the caller to check against the index (None
        without `check_ids`)."""
        names = set(target_names({"arrays": self.records}))
        example_rows, inverse = np.unique(rows, return_inverse=True)
        first = {n: example_rows for n in names if n in PER_EXAMPLE or n.startswith("logits/")}
        if self.check_ids:
            first["example_id"] = example_rows
        per_example = read(first)
        if "word_offsets" in names and "example_texts" in per_example:
            per_example["word_offsets"] = _offsets_at(per_example["example_texts"], read)
        for name, array in per_example.items():
            if name.startswith("logits/") or name in ("candidates", "similarity"):
                dtype = np.int64 if name == "candidates" else np.float32
                self._out(name, array.shape[1:], dtype)[positions] = array[inverse]
        plan = _RowPlan(per_example, inverse, names, self.defer_feat)
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
            self.word_sources.append((read, plan.word_rows[take]))
        return per_example["example_id"][inverse] if self.check_ids else None

    def _words(self) -> WordTargets | None:
        if "word_offsets" not in self.records:
            return None
        offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.offsets = offsets
        fields = {}
        for field, (name, dtype) in WORD_FIELDS.items():
            trailing = (
                self.records[name]["shape"][1:]
                if name in self.records
                else ([2] if field == "span" else [])
            )
            fill = np.nan if dtype is np.float32 and field != "feat" else 0
            rows = 0 if field == "feat" and self.defer_feat else int(offsets[-1])
            out = np.full((rows, *trailing), fill, dtype=dtype)
            for targets, counts, words in self.word_parts:
                if name in words:
                    out[ragged_index(offsets[targets], counts)] = words[name]
            fields[field] = out
        return WordTargets(offsets=offsets, **fields)

    def chosen_features(self, chosen: np.ndarray) -> np.ndarray:
        """The features of the flat word indices `chosen` (sorted, unique): per shard, one
        batched read of just those words' rows."""
        if "word_feat" not in self.records:
            return np.zeros((len(chosen), 0), dtype=np.float32)
        trailing = self.records["word_feat"]["shape"][1:]
        feat = np.zeros((len(chosen), *trailing), dtype=np.float32)
        for (targets, counts, _), (read, shard_rows) in zip(self.word_parts, self.word_sources):
            flat = ragged_index(self.offsets[targets], counts)
            at = np.minimum(np.searchsorted(chosen, flat), max(len(chosen) - 1, 0))
            hit = chosen[at] == flat if len(chosen) else np.zeros(len(flat), bool)
            if not hit.any():
                continue
            rows, inverse = np.unique(shard_rows[hit], return_inverse=True)
            feat[at[hit]] = read({"word_feat": rows})["word_feat"][inverse]
        return feat

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
        logits = {
            name[len("logits/") :]: self._ensure(name, np.float32)
            for name in self.records
            if name.startswith("logits/")
        }
        similarity = self._ensure("similarity", np.float32)
        centres = manifest.get("extra", {}).get("kmeans_centres")
        if similarity is not None and centres:
            logits["kmeans"] = kmeans_logits(similarity, centres, _kmeans_scale(manifest))
        eos_shape = None
        if "text_eos" in self.records:
            eos_shape = [self.c, *self.records["text_eos"]["shape"][1:]]
        return Targets(
            example_ids=ids,
            num_choices=self.c,
            image=self._ensure("image", np.float32),
            text_eos=self._ensure("text_eos", np.float32, eos_shape),
            words=self._words(),
            logits=logits,
            candidates=self._ensure("candidates", np.int64),
            default_logits=_default_logits(manifest, logits),
        )


def _default_logits(manifest: dict[str, Any], logits: dict[str, np.ndarray]) -> str | None:
    name = (
        manifest["default_logits"]
        if "default_logits" in manifest
        else manifest.get("settings", {}).get("default_logits")
    )
    return name if name in logits else None
