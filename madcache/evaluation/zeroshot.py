"""Zero-shot evaluation of the teacher alone, from its cache (MAD.md, "Teacher logits").

No student and no teacher model: the prediction is the arg-max of the logits stored at
extraction, scored by the dataset's own metric (its spec's `score`) against the labels in the
cache index. The dataset spec names the protocol (`Dataset.zero_shot`), one of `ZERO_SHOT`:

- `logits`: each stored logits name on its own. VCR: Q2A (`:qa` examples), QA2R (`:qar`), Q2AR
  (a question is right only when both its `:qa` and `:qar` predictions are; joined by the
  index's `group`) for each prompt (`iqa`, `ia`); SNLI-VE: accuracy of the k-means logits
  (`kmeans`, derived by the reader from the stored similarities, the split's cluster centres and the logit scale).
- `answer-candidates` (VQA): `template` logits over the prefiltered `candidates`; top-k
  prefiltering keeps the first k candidates (they are stored in the sentence encoder's ranking).
  The answer string is `vocabulary[candidate]` (the manifest's `extra.answer_vocab`, else
  `answers.txt` under the dataset root). VQA accuracy needs the 10 human answers, which the cache
  does not hold: they are read from the dataset's files (root: the argument, else the
  manifest's root).

Every metric is in percent, overall and per category (VCR question category, SNLI-VE class, VQA
question type), with the spec's chance levels alongside.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from madcache.cache.manifest import cache_digest
from madcache.cache.targets import Targets
from madcache.core.errors import ConfigError
from madcache.core.io import write_json
from madcache.core.registry import Registry
from madcache.data import DATASETS, Dataset, Example
from madcache.data.base import Scorer
from madcache.evaluation.cached import dataset_examples, index_examples

VQA_TOP_K = (1, 3, 10)
RESULT_JSON = "zeroshot.json"
RESULT_MD = "zeroshot.md"


# ----------------------------------------------------------------------------- scoring


def overall_and_by_category(
    examples: Sequence[Example], predictions: Sequence[Any], score: Scorer
) -> dict[str, Any]:
    """`score` over all examples and over the examples of each category."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        rows_of[str(example.category)].append(i)

    def on(rows: Sequence[int]) -> dict[str, float]:
        return score([examples[r] for r in rows], [predictions[r] for r in rows])

    return {
        "overall": on(range(len(examples))),
        "by_category": {c: on(rows_of[c]) for c in sorted(rows_of)},
    }


def logits_zero_shot(
    examples: Sequence[Example],
    logits: Mapping[str, np.ndarray],
    score: Scorer,
    order: Sequence[str] = (),
) -> dict[str, Any]:
    """Per stored logits name (those in `order` first, then the rest by name): the arg-max
    choice or class, scored overall and per category."""
    names = [n for n in order if n in logits] + sorted(set(logits) - set(order))
    return {
        name: overall_and_by_category(
            examples, np.asarray(logits[name]).argmax(axis=1).tolist(), score
        )
        for name in names
    }


def vqa_predictions(
    logits: np.ndarray, candidates: np.ndarray, vocab: Sequence[str], top_k: int
) -> list[str]:
    """The answer of the best of the first `top_k` candidates (padding ids < 0 never win)."""
    scores = np.asarray(logits, dtype=np.float64)[:, :top_k].copy()
    ids = np.asarray(candidates)[:, :top_k]
    scores[ids < 0] = -np.inf
    best = ids[np.arange(len(ids)), scores.argmax(axis=1)]
    return [vocab[i] if i >= 0 else "" for i in best.tolist()]


def vqa_zero_shot(
    examples: Sequence[Example],
    logits: Mapping[str, np.ndarray],
    candidates: np.ndarray | None,
    vocab: Sequence[str],
    score: Scorer,
    top_ks: Sequence[int] = VQA_TOP_K,
) -> dict[str, Any]:
    """`template` logits with top-1/3/10 prefiltering, overall and per question type."""
    if "template" not in logits or candidates is None:
        raise ConfigError(
            "this VQA cache has no template logits/candidates (extracted "
            "without a relevance model?)"
        )
    return {
        f"template-top{k}": overall_and_by_category(
            examples, vqa_predictions(logits["template"], candidates, vocab, k), score
        )
        for k in top_ks
        if k <= candidates.shape[1]
    }


# ----------------------------------------------------------------------------- protocols


@dataclass
class CachedSplit:
    """What a zero-shot protocol reads: the dataset spec, the cached examples (stand-ins from
    the cache index, in its order), their stored targets, the cache manifest, and the dataset
    root the user gave (None: the manifest's)."""

    dataset: Dataset
    examples: list[Example]
    targets: Targets
    manifest: Mapping[str, Any]
    root: Path | None = None


def stored_logits(split: CachedSplit) -> dict[str, Any]:
    if not split.targets.logits:
        raise ConfigError(
            f"this {split.dataset.name} cache has no teacher logits (extracted "
            "without a relevance model?)"
        )
    return logits_zero_shot(
        split.examples,
        split.targets.logits,
        split.dataset.score,
        order=split.manifest.get("logits") or (),
    )


def answer_candidates(split: CachedSplit) -> dict[str, Any]:
    root = _dataset_root(split.manifest, split.root)
    vocab = answer_vocabulary(split.manifest, root)
    options = split.manifest.get("fingerprint", {}).get("dataset", {}).get("read_options", {})
    examples = dataset_examples(
        split.dataset.name,
        root,
        split.manifest.get("split"),
        [ex.id for ex in split.examples],
        options,
    )
    return vqa_zero_shot(
        examples, split.targets.logits, split.targets.candidates, vocab, split.dataset.score
    )


# The zero-shot protocols a dataset spec names (`Dataset.zero_shot`).
ZERO_SHOT: Registry[Callable[[CachedSplit], dict[str, Any]]] = Registry("zero-shot protocol")
ZERO_SHOT.register("logits", stored_logits)
ZERO_SHOT.register("answer-candidates", answer_candidates)


# ----------------------------------------------------------------------------- from a cache


def run_zero_shot(
    cache_path: str | Path, *, root: str | Path | None = None, out: str | Path | None = None
) -> dict[str, Any]:
    """Zero-shot results of the teacher whose targets are cached at `cache_path` (the cache of
    the *evaluated* split). With `out`, writes `zeroshot.json` and `zeroshot.md` there."""
    from madcache.cache.reader import open_cache

    cache = open_cache(cache_path)
    dataset = DATASETS.get(cache.manifest.get("dataset"))
    if dataset.zero_shot is None:
        raise ConfigError(
            f"dataset '{dataset.name}' has no zero-shot protocol (its spec's "
            f"zero_shot; available: {', '.join(ZERO_SHOT.names())})"
        )
    protocol = ZERO_SHOT.get(dataset.zero_shot)
    examples = index_examples(cache)
    targets = cache.load_targets([ex.id for ex in examples])
    protocols = protocol(
        CachedSplit(
            dataset, examples, targets, cache.manifest, None if root is None else Path(root)
        )
    )
    result = {
        "dataset": dataset.name,
        "split": cache.manifest.get("split"),
        "cache": str(cache_path),
        "teachers": cache.manifest.get("teachers"),
        "cache_fingerprint": cache_digest(cache.manifest),
        "num_examples": len(examples),
        "chance": dict(dataset.chance),
        "protocols": protocols,
    }
    if out is not None:
        write_zero_shot(result, out)
    return result


def _dataset_root(manifest: Mapping[str, Any], root: Path | None) -> Path:
    candidate = root if root is not None else manifest.get("root")
    if candidate is None or not Path(candidate).is_dir():
        raise ConfigError(
            "VQA zero-shot accuracy needs the 10 human answers per question, "
            "which are not in the cache: pass the dataset root (--root DIR)"
        )
    return Path(candidate)


def answer_vocabulary(manifest: Mapping[str, Any], root: Path | None) -> list[str]:
    """The answer vocabulary the candidates index: the manifest's, else `root/answers.txt`."""
    vocab = manifest.get("extra", {}).get("answer_vocab")
    if vocab:
        return list(vocab)
    if root is not None and (Path(root) / "answers.txt").is_file():
        from madcache.data.vqa import read_answer_vocab

        return read_answer_vocab(Path(root) / "answers.txt")
    raise ConfigError(
        "the cache's manifest holds no answer vocabulary (extra.answer_vocab) "
        "and there is no answers.txt under the dataset root"
    )


# ----------------------------------------------------------------------------- output


def metric_names(result: Mapping[str, Any]) -> list[str]:
    """The metric columns of a result, in a stable order (counts last)."""
    names: list[str] = []
    for protocol in result["protocols"].values():
        for name in protocol["overall"]:
            if name != "n" and name not in names:
                names.append(name)
    return names


def zero_shot_markdown(result: Mapping[str, Any]) -> str:
    """One row per (prompt, category); chance levels in the last row."""
    names = metric_names(result)
    lines = [
        f"## Zero-shot: {result['dataset']} {result.get('split') or ''} "
        f"(teachers: {teachers_label(result.get('teachers'))})",
        "",
        "| protocol | category | " + " | ".join(names) + " | n |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for prompt, scores in result["protocols"].items():
        rows = [("all", scores["overall"]), *scores["by_category"].items()]
        for category, values in rows:
            cells = [_fmt(values.get(name)) for name in names]
            lines.append(
                f"| {prompt} | {category} | " + " | ".join(cells) + f" | {values.get('n', '')} |"
            )
    if result.get("chance"):
        cells = [_fmt(result["chance"].get(name)) for name in names]
        lines.append("| chance | | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def teachers_label(teachers: Any) -> str:
    """A short name for a teacher set: the distinct names of its roles, or "-" for none."""
    if not teachers:
        return "-"
    if isinstance(teachers, Mapping):
        teachers = [v for v in teachers.values() if v]
    if isinstance(teachers, (list, tuple)):
        return "+".join(dict.fromkeys(str(t) for t in teachers)) or "-"
    return str(teachers)


def _fmt(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.2f}"


def write_zero_shot(result: Mapping[str, Any], out: str | Path) -> Path:
    """`zeroshot.json` + `zeroshot.md` under `out`; returns the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULT_JSON, result, default=_json_default)
    (out / RESULT_MD).write_text(zero_shot_markdown(result), encoding="utf-8")
    return out / RESULT_JSON


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def load_zero_shot(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
