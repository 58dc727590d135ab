"""Predictions of a trained run in the official submission formats (VCR and VQA v2 test labels
are hidden: their leaderboards score these files), and scoring such a file against labels with
madcache's own metrics (the round trip the tests run on labelled splits).

A dataset's spec names its format (`Dataset.submission`), one of `SUBMISSION_FORMATS`:

| format | dataset | file | format (checked against its public description) |
|---|---|---|---|
| `vcr-leaderboard` | `vcr` | `.csv` | the VCR leaderboard's: header `annot_id, answer_0..3, rationale_conditioned_on_a{i}_{j}` (i, j = 0..3); one row per question in the annotation file's order; answer probabilities (softmax over the 4 answers) and, for each answer i, the rationale probabilities with context = question + answer i. The leaderboard takes the arg-max answer, then the arg-max rationale of the row conditioned on the right answer |
| `vqa-results` | `vqa` | `.json` | the VQA evaluation server's results: `[{"question_id": int, "answer": str}]`, one per question, the arg-max of the run's answer vocabulary |
| `snli-ve-predictions` | `snli-ve` | `.jsonl` | SNLI-VE has no evaluation server (its test labels are public, `madcache eval --split test` scores them): one line per pair, `{"pairID", "Flickr30K_ID", "prediction": label, "probabilities": {label: p}}`, with the dataset's own keys and label names |
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from madcache.core.device import resolve_device
from madcache.core.errors import ConfigError, DataError, DataFileNotFoundError
from madcache.core.io import atomic_write_text, check_output_location
from madcache.core.registry import Registry
from madcache.data.base import DATASETS
from madcache.data.metrics import accuracy_scores, vcr_scores, vqa_scores, without_counts
from madcache.data.records import Example
from madcache.data.snli_ve import LABELS as SNLI_VE_LABELS
from madcache.students.predict import load_run_student, predict_logits
from madcache.students.visual import loader_for
from madcache.train.config import TrainConfig
from madcache.train.rundir import load_run, run_files
from madcache.train.setup import load_eval_examples

VCR_COLUMNS = [
    "annot_id",
    *(f"answer_{i}" for i in range(4)),
    *(f"rationale_conditioned_on_a{i}_{j}" for i in range(4) for j in range(4)),
]


def write_predictions(
    run_dir: str | Path,
    *,
    split: str,
    out: str | Path,
    root: str | Path | None = None,
    regions: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Predict `split` with the run's saved student and write the dataset's submission file to
    `out` (refused if it exists, unless `force`). Returns a summary."""
    run_dir, out = Path(run_dir), Path(out)
    config = load_run(run_dir)
    if root is not None:
        config.root = str(root)
    check_output_location(
        out,
        roots=[config.root],
        inputs=[*run_files(run_dir), regions, config.regions, config.eval_regions],
    )
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; choose another --out or pass --force")
    submission = submission_format(config.dataset)
    if regions is None:
        regions = (config.eval_regions if split == config.eval_split else None) or config.regions
    config.device = resolve_device(config.device, option="the run's device")  # auto -> here
    student = load_run_student(run_dir, device=config.device)
    loader = loader_for(student, root=config.root, regions=regions)

    def logits(examples: Sequence[Example]) -> torch.Tensor:
        return predict_logits(
            student, examples, regions=loader, batch_size=config.batch_size, device=config.device
        )

    rows = submission.write(config, split, student, logits, out)
    return {"dataset": config.dataset, "split": split, "out": str(out), "rows": rows}


def score_predictions(
    dataset: str, path: str | Path, examples: Sequence[Example]
) -> dict[str, float]:
    """A submission file scored against labelled `examples` with madcache's metrics
    (`madcache.data.metrics`), read back the way its evaluation server reads it."""
    submission = submission_format(dataset)
    if not Path(path).is_file():
        raise DataFileNotFoundError("prediction file not found", file=path)
    return without_counts(submission.score(Path(path), examples))


def submission_format(dataset: str) -> SubmissionFormat:
    """The format the spec of `dataset` names; a dataset without one is a ConfigError listing
    the datasets that have one."""
    name = DATASETS.get(dataset).submission if dataset in DATASETS else None
    if name is None:
        having = [n for n in DATASETS if DATASETS.get(n).submission is not None]
        raise ConfigError(
            f"no submission format for dataset {dataset!r}; datasets with one: {', '.join(having)}"
        )
    return SUBMISSION_FORMATS.get(name)


# ----------------------------------------------------------------------------- VCR


def _vcr_rows(config: TrainConfig, split: str, logits: Callable) -> list[list[Any]]:
    from madcache.data.vcr import conditioned_rationale_examples

    questions = load_eval_examples(_only_qa(config), split)
    answers = logits(questions).softmax(-1)
    renderer = config.read_options.get("renderer", "tag")
    conditioned = [r for ex in questions for r in conditioned_rationale_examples(ex, renderer)]
    rationales = logits(conditioned).softmax(-1).reshape(len(questions), 4, 4)
    return [
        [ex.group, *answers[n].tolist(), *rationales[n].flatten().tolist()]
        for n, ex in enumerate(questions)
    ]


def _only_qa(config: TrainConfig) -> TrainConfig:
    """The run's config reading `:qa` examples only (one per question, in file order)."""
    return TrainConfig.from_dict(
        {**config.to_dict(), "read_options": {**config.read_options, "modes": ["qa"]}}
    )


def write_vcr(config: TrainConfig, split: str, student, logits: Callable, out: Path) -> int:
    rows = _vcr_rows(config, split, logits)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VCR_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out, buffer.getvalue())
    return len(rows)


def read_vcr_predictions(path: Path) -> dict[str, tuple[list[float], list[list[float]]]]:
    """annot_id -> (answer probabilities [4], rationale probabilities [4 answers][4])."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != VCR_COLUMNS:
            raise DataError(
                f"expected the VCR leaderboard columns {VCR_COLUMNS[:3]}...", file=path, line=1
            )
        found = {}
        for line, row in enumerate(reader, 2):
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                raise DataError("probabilities must be numbers", file=path, line=line) from None
            if len(values) != 20:
                raise DataError(f"expected 21 columns, got {len(row)}", file=path, line=line)
            found[row[0]] = (values[:4], [values[4 + 4 * i : 8 + 4 * i] for i in range(4)])
    return found


def score_vcr_file(path: Path, examples: Sequence[Example]) -> dict[str, float]:
    """As the leaderboard: arg-max answer; arg-max rationale of the row of the right answer."""
    rows = read_vcr_predictions(path)
    answer_label = {ex.group: ex.label for ex in examples if ex.id.endswith(":qa")}
    labelled = [ex for ex in examples if ex.label is not None and ex.group in rows]
    predictions = []
    for ex in labelled:
        answers, rationales = rows[ex.group]
        scores = answers if ex.id.endswith(":qa") else rationales[answer_label[ex.group]]
        predictions.append(max(range(4), key=scores.__getitem__))
    return vcr_scores(
        [ex.id for ex in labelled],
        [ex.label for ex in labelled],
        [ex.group for ex in labelled],
        predictions,
    )


# ----------------------------------------------------------------------------- VQA


def write_vqa(config: TrainConfig, split: str, student, logits: Callable, out: Path) -> int:
    examples = load_eval_examples(config, split)
    best = logits(examples).argmax(-1).tolist()
    results = [
        {"question_id": int(ex.id), "answer": student.answers[i]} for ex, i in zip(examples, best)
    ]
    atomic_write_text(out, json.dumps(results) + "\n")
    return len(results)


def score_vqa_file(path: Path, examples: Sequence[Example]) -> dict[str, float]:
    """The results file read as the official loader reads it, scored with `vqa_accuracy`."""
    from madcache.data.vqa import read_vqa_results

    results = read_vqa_results(path)
    scored = [ex for ex in examples if ex.id in results]
    return vqa_scores([results[ex.id] for ex in scored], [ex.answers for ex in scored])


# ----------------------------------------------------------------------------- SNLI-VE


def write_snli_ve(config: TrainConfig, split: str, student, logits: Callable, out: Path) -> int:
    examples = load_eval_examples(config, split)
    probabilities = logits(examples).softmax(-1)
    lines = [
        json.dumps(
            {
                "pairID": ex.id,
                "Flickr30K_ID": ex.image_id,
                "prediction": SNLI_VE_LABELS[int(p.argmax())],
                "probabilities": dict(zip(SNLI_VE_LABELS, p.tolist())),
            }
        )
        for ex, p in zip(examples, probabilities)
    ]
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    return len(lines)


def score_snli_ve(path: Path, examples: Sequence[Example]) -> dict[str, float]:
    predicted = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(text)
        if record.get("prediction") not in SNLI_VE_LABELS:
            raise DataError(
                f"prediction must be one of {', '.join(SNLI_VE_LABELS)}",
                file=path,
                line=line,
                field="prediction",
            )
        predicted[record["pairID"]] = SNLI_VE_LABELS.index(record["prediction"])
    scored = [ex for ex in examples if ex.id in predicted]
    return accuracy_scores([ex.label for ex in scored], [predicted[ex.id] for ex in scored])


# ----------------------------------------------------------------------------- the formats


@dataclass(frozen=True)
class SubmissionFormat:
    """One submission file format: `write(config, split, student, logits, out) -> rows` writes
    a run's predictions of `split` to `out` (`logits(examples)` runs the student);
    `score(path, examples) -> {metric: percent, "n": count}` reads a file back as its
    evaluation server does and scores it."""

    write: Callable[[TrainConfig, str, Any, Callable, Path], int]
    score: Callable[[Path, Sequence[Example]], dict[str, float]]


# The submission formats a dataset spec names (`Dataset.submission`).
SUBMISSION_FORMATS: Registry[SubmissionFormat] = Registry("submission format")
SUBMISSION_FORMATS.register("vcr-leaderboard", SubmissionFormat(write_vcr, score_vcr_file))
SUBMISSION_FORMATS.register("vqa-results", SubmissionFormat(write_vqa, score_vqa_file))
SUBMISSION_FORMATS.register("snli-ve-predictions", SubmissionFormat(write_snli_ve, score_snli_ve))
