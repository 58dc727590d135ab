"""Zero-shot evaluation of the teacher alone, from its cache (MAD.md, "Teacher logits").

No student and no teacher model: the prediction is the arg-max of the logits stored at
extraction, scored against the labels in the cache index.

- VCR: Q2A (`:qa` examples), QA2R (`:qar`), Q2AR (a question is right only when both its `:qa`
  and `:qar` predictions are; joined by the index's `group`), for each prompt (`iqa`, `ia`).
- SNLI-VE: accuracy of the k-means logits (`kmeans`, derived by the reader from the stored
  similarities, the split's cluster centres and the logit scale).
- VQA: `template` logits over the prefiltered `candidates`; top-k prefiltering keeps the first k
  candidates (they are stored in the sentence encoder's ranking). The answer string is
  `vocabulary[candidate]` (the manifest's `extra.answer_vocab`, else `answers.txt` under the
  dataset root). VQA accuracy needs the 10 human answers, which the cache does not hold: they are
  read with `read_examples("vqa", root, split)` (root: the argument, else the manifest's root).

Every metric is in percent, overall and per category (VCR question category, SNLI-VE class, VQA
question type), with chance levels alongside.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from madcache.core.errors import ConfigError
from madcache.cache.manifest import cache_digest
from madcache.core.io import write_json
from madcache.data.metrics import accuracy_scores, vcr_scores, vqa_scores

CHANCE = {"vcr": {"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25},
          "snli-ve": {"accuracy": 100.0 / 3.0}}
VQA_TOP_K = (1, 3, 10)
VCR_PROMPTS = ("iqa", "ia")
RESULT_JSON = "zeroshot.json"
RESULT_MD = "zeroshot.md"


# ----------------------------------------------------------------------------- scoring helpers

def by_category(categories: Sequence[str], score: Callable[[np.ndarray], dict[str, float]]
                ) -> dict[str, dict[str, float]]:
    """`score(rows)` for the rows of each category."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, category in enumerate(categories):
        rows_of[str(category)].append(i)
    return {c: score(np.asarray(rows_of[c], dtype=np.int64)) for c in sorted(rows_of)}


# ----------------------------------------------------------------------------- per dataset

def vcr_zero_shot(ids: Sequence[str], logits: Mapping[str, np.ndarray],
                  labels: Sequence[int | None], groups: Sequence[str],
                  categories: Sequence[str]) -> dict[str, Any]:
    """Per prompt: Q2A / QA2R / Q2AR overall and per question category (a `:qar` example takes
    its question's category from the group's `:qa` example when there is one)."""
    group_category = {g or i.rpartition(":")[0]: c
                      for i, g, c in zip(ids, groups, categories) if i.endswith(":qa")}
    cats = [group_category.get(g or i.rpartition(":")[0], c)
            for i, g, c in zip(ids, groups, categories)]
    out = {}
    for prompt in [p for p in VCR_PROMPTS if p in logits] + sorted(set(logits) - set(VCR_PROMPTS)):
        predictions = np.asarray(logits[prompt]).argmax(axis=1)

        def score(rows: np.ndarray) -> dict[str, float]:
            return vcr_scores([ids[r] for r in rows], [labels[r] for r in rows],
                              [groups[r] for r in rows], predictions[rows])
        out[prompt] = {"overall": score(np.arange(len(ids))), "by_category": by_category(cats, score)}
    return out


def snli_ve_zero_shot(logits: Mapping[str, np.ndarray], labels: Sequence[int | None],
                      categories: Sequence[str]) -> dict[str, Any]:
    """k-means accuracy overall and per class (`categories`)."""
    if "kmeans" not in logits:
        raise ConfigError("this SNLI-VE cache has no k-means logits (extracted without a "
                          "relevance model?)")
    predictions = np.asarray(logits["kmeans"]).argmax(axis=1)

    def score(rows: np.ndarray) -> dict[str, float]:
        return accuracy_scores([labels[r] for r in rows], predictions[rows])
    return {"kmeans": {"overall": score(np.arange(len(labels))),
                       "by_category": by_category(categories, score)}}


def vqa_predictions(logits: np.ndarray, candidates: np.ndarray, vocab: Sequence[str],
                    top_k: int) -> list[str]:
    """The answer of the best of the first `top_k` candidates (padding ids < 0 never win)."""
    scores = np.asarray(logits, dtype=np.float64)[:, :top_k].copy()
    ids = np.asarray(candidates)[:, :top_k]
    scores[ids < 0] = -np.inf
    best = ids[np.arange(len(ids)), scores.argmax(axis=1)]
    return [vocab[i] if i >= 0 else "" for i in best.tolist()]


def vqa_zero_shot(logits: Mapping[str, np.ndarray], candidates: np.ndarray | None,
                  vocab: Sequence[str], answers: Sequence[Sequence[str]],
                  categories: Sequence[str], top_ks: Sequence[int] = VQA_TOP_K) -> dict[str, Any]:
    """`template` logits with top-1/3/10 prefiltering, overall and per question type."""
    if "template" not in logits or candidates is None:
        raise ConfigError("this VQA cache has no template logits/candidates (extracted "
                          "without a relevance model?)")
    out = {}
    for k in [k for k in top_ks if k <= candidates.shape[1]]:
        predictions = vqa_predictions(logits["template"], candidates, vocab, k)

        def score(rows: np.ndarray) -> dict[str, float]:
            return vqa_scores([predictions[r] for r in rows], [answers[r] for r in rows])
        out[f"template-top{k}"] = {"overall": score(np.arange(len(predictions))),
                                   "by_category": by_category(categories, score)}
    return out


# ----------------------------------------------------------------------------- from a cache

def run_zero_shot(cache_path: str | Path, *, root: str | Path | None = None,
                  out: str | Path | None = None) -> dict[str, Any]:
    """Zero-shot results of the teacher whose targets are cached at `cache_path` (the cache of
    the *evaluated* split). With `out`, writes `zeroshot.json` and `zeroshot.md` there."""
    from madcache.cache.reader import open_cache

    cache = open_cache(cache_path)
    table = cache.index()
    columns = {name: table.column(name).to_pylist() if name in table.column_names else None
               for name in ("example_id", "label", "group", "category")}
    ids = columns["example_id"]
    n = len(ids)
    labels = columns["label"] or [None] * n
    groups = [g or "" for g in (columns["group"] or [""] * n)]
    categories = [c if c is not None else "all" for c in (columns["category"] or ["all"] * n)]
    targets = cache.load_targets(ids)
    dataset = cache.manifest.get("dataset")
    if dataset == "vcr":
        protocols = vcr_zero_shot(ids, targets.logits, labels, groups, categories)
    elif dataset == "snli-ve":
        protocols = snli_ve_zero_shot(targets.logits, labels, categories)
    elif dataset == "vqa":
        root = _dataset_root(cache.manifest, root)
        vocab = answer_vocabulary(cache.manifest, root)
        answers = human_answers(root, cache.manifest.get("split"), ids,
                                cache.fingerprint.get("dataset", {}).get("read_options", {}))
        protocols = vqa_zero_shot(targets.logits, targets.candidates, vocab, answers, categories)
    else:
        raise ConfigError(f"no zero-shot protocol for dataset {dataset!r} (vcr, snli-ve, vqa)")
    result = {"dataset": dataset, "split": cache.manifest.get("split"), "cache": str(cache_path),
              "teachers": cache.manifest.get("teachers"),
              "cache_fingerprint": cache_digest(cache.manifest),
              "num_examples": n, "chance": CHANCE.get(dataset, {}), "protocols": protocols}
    if out is not None:
        write_zero_shot(result, out)
    return result


def _dataset_root(manifest: Mapping[str, Any], root: str | Path | None) -> Path:
    candidate = root if root is not None else manifest.get("root")
    if candidate is None or not Path(candidate).is_dir():
        raise ConfigError("VQA zero-shot accuracy needs the 10 human answers per question, "
                          "which are not in the cache: pass the dataset root (--root DIR)")
    return Path(candidate)


def answer_vocabulary(manifest: Mapping[str, Any], root: Path | None) -> list[str]:
    """The answer vocabulary the candidates index: the manifest's, else `root/answers.txt`."""
    vocab = manifest.get("extra", {}).get("answer_vocab")
    if vocab:
        return list(vocab)
    if root is not None and (Path(root) / "answers.txt").is_file():
        from madcache.data.vqa import read_answer_vocab

        return read_answer_vocab(Path(root) / "answers.txt")
    raise ConfigError("the cache's manifest holds no answer vocabulary (extra.answer_vocab) "
                      "and there is no answers.txt under the dataset root")


def human_answers(root: Path, split: str | None, ids: Sequence[str],
                  options: Mapping[str, Any] | None = None) -> list[tuple[str, ...]]:
    """The 10 human answers of each question id, from the dataset's own files."""
    from madcache.data import read_examples

    if split is None:
        raise ConfigError("the cache's manifest does not name its split")
    examples = read_examples("vqa", root, split, **dict(options or {})).examples
    by_id = {ex.id: ex.answers for ex in examples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ConfigError(f"{len(missing)} cached questions (e.g. {missing[0]!r}) are not in "
                          f"VQA {split} under {root}: is this the root the cache was built from?")
    return [tuple(by_id[i]) for i in ids]


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
    lines = [f"## Zero-shot: {result['dataset']} {result.get('split') or ''} "
             f"(teachers: {teachers_label(result.get('teachers'))})", "",
             "| protocol | category | " + " | ".join(names) + " | n |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for prompt, scores in result["protocols"].items():
        rows = [("all", scores["overall"]), *scores["by_category"].items()]
        for category, values in rows:
            cells = [_fmt(values.get(name)) for name in names]
            lines.append(f"| {prompt} | {category} | " + " | ".join(cells)
                         + f" | {values.get('n', '')} |")
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
