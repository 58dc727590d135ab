"""The one implementation of every metric, shared by students, adapters and zero-shot teachers
(they sit side by side in one report table, so they must count the same way).

Metric names: VCR `q2a`, `qa2r`, `q2ar`; SNLI-VE `accuracy`; VQA `vqa_accuracy`; all in percent.
Conventions:
- unlabelled rows (label None, e.g. a test split) are left out;
- a metric whose denominator is empty is absent from the result (never a silent 0 or NaN);
- each result also carries `n`, the number of scored questions/examples; callers that record
  only metrics drop it with `without_counts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from madcache.data.base import DATASETS, MULTILABEL
from madcache.data.records import Example

COUNT = "n"


def vcr_scores(
    ids: Sequence[str],
    labels: Sequence[int | None],
    groups: Sequence[str | None],
    predictions: Sequence[int],
) -> dict[str, float]:
    """Q2A over the `:qa` examples, QA2R over the `:qar` examples, and Q2AR over the questions
    with a `:qa` example: right only when both its `:qa` and its `:qar` predictions are (a
    question without a `:qar` example counts as wrong). Examples are joined into questions by
    `group` (else the id without its `:qa`/`:qar` suffix)."""
    right: dict[str, dict[str, bool]] = {"qa": {}, "qar": {}}
    for eid, label, group, pred in zip(ids, labels, groups, predictions, strict=True):
        if label is None:
            continue
        base, _, mode = str(eid).rpartition(":")
        if mode not in right:
            raise ValueError(f"VCR example id {eid!r} does not end in ':qa' or ':qar'")
        right[mode][group or base] = int(pred) == int(label)
    qa, qar = right["qa"], right["qar"]
    out: dict[str, float] = {}
    _put(out, "q2a", qa.values())
    _put(out, "qa2r", qar.values())
    if qa and qar:
        _put(out, "q2ar", [ok and qar.get(g, False) for g, ok in qa.items()])
    out[COUNT] = len(qa) or len(qar)
    return out


def accuracy_scores(labels: Sequence[int | None], predictions: Sequence[int]) -> dict[str, float]:
    """Classification accuracy (SNLI-VE) over the labelled examples."""
    flags = [int(p) == int(y) for y, p in zip(labels, predictions, strict=True) if y is not None]
    out: dict[str, float] = {}
    _put(out, "accuracy", flags)
    out[COUNT] = len(flags)
    return out


def vqa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Official VQA accuracy (`madcache.data.vqa.vqa_accuracy`), mean over the questions that
    have human answers."""
    from madcache.data.vqa import vqa_accuracy

    values = [vqa_accuracy(p, a) for p, a in zip(predictions, answers, strict=True) if a]
    out: dict[str, float] = {}
    if values:
        out["vqa_accuracy"] = 100.0 * sum(values) / len(values)
    out[COUNT] = len(values)
    return out


def without_counts(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a result, without its `n`."""
    return {k: v for k, v in result.items() if k != COUNT}


def _put(out: dict[str, float], name: str, flags: Iterable[bool]) -> None:
    flags = [bool(f) for f in flags]
    if flags:
        out[name] = 100.0 * sum(flags) / len(flags)


# ----------------------------------------------------------------------------- scorers
# What a `Dataset` spec's `score` names: metrics of predictions over examples (a prediction is a
# choice or class index; for a multilabel dataset, the predicted answer string).


def score_vcr(examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, float]:
    """Q2A / QA2R / Q2AR (`vcr_scores`), examples joined into questions by `group`."""
    return vcr_scores(
        [ex.id for ex in examples],
        [ex.label for ex in examples],
        [ex.group for ex in examples],
        predictions,
    )


def score_accuracy(examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, float]:
    """Accuracy over the labelled examples (`accuracy_scores`)."""
    return accuracy_scores([ex.label for ex in examples], predictions)


def score_vqa(examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, float]:
    """VQA accuracy of predicted answer strings against each example's human `answers`."""
    return vqa_scores(predictions, [ex.answers for ex in examples])


def score_logits(
    dataset: str, examples: Sequence[Example], logits: Any, answers: Sequence[str] | None = None
) -> dict[str, float]:
    """Metrics of `dataset` (its spec's `score`) from a model's logits [N, K] over `examples`:
    the arg-max is the prediction (a multilabel dataset: an index into `answers`, the model's
    answer vocabulary)."""
    spec = DATASETS.get(dataset)
    predictions = logits.argmax(dim=-1).tolist()
    if spec.task == MULTILABEL:
        if answers is None:
            raise ValueError(f"{dataset} scoring needs the model's answer vocabulary")
        predictions = [answers[i] for i in predictions]
    return spec.score(examples, predictions)
