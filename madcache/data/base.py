"""The Dataset spec: every fact the rest of the code needs about one dataset, and the registry.

A dataset is a reader of its original files plus the facts the later stages look up instead of
branching on the dataset's name: the task type, how predictions are scored, chance levels, the
low-shot sampler, the teacher-logit and zero-shot protocols, the submission format, SM support.
Data comes first in the flow, so a spec names the later stages' protocols by string; each stage
keeps its own small registry of them (`madcache.extraction.protocols.PROTOCOLS`,
`madcache.evaluation.zeroshot.ZERO_SHOT`, `madcache.evaluation.predict.SUBMISSION_FORMATS`) and an
unknown name is an error there that lists the valid ones.

Adding a dataset = one reader module and one `DATASETS.register("name", Dataset(...))` line
(docs/architecture.md, "Adding things", has a worked example).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Protocol,
    runtime_checkable,
)

from madcache.core.errors import ConfigError
from madcache.core.registry import Registry
from madcache.data.jsonl import as_bool, check_options
from madcache.data.records import BadRecord, Example, ReadResult, without_labels

MULTIPLE_CHOICE = "multiple_choice"  # one score per text of the example (VCR: 4 choices)
CLASSIFICATION = "classification"  # one of `label_names` (SNLI-VE: 3 classes)
MULTILABEL = "multilabel"  # soft scores over an answer vocabulary (VQA)
TASKS = (MULTIPLE_CHOICE, CLASSIFICATION, MULTILABEL)

# Scores predictions over examples -> {metric: percent, ..., "n": count}
# (`madcache.data.metrics`). A prediction is a choice or class index; for a multilabel dataset,
# the predicted answer string.
Scorer = Callable[[Sequence[Example], Sequence[Any]], dict[str, float]]
# `sample(examples, *, k, seed) -> madcache.data.lowshot.Split`: k units per category.
Sampler = Callable[..., Any]


@runtime_checkable
class Reader(Protocol):
    """A reader of one dataset's original files.

    `read` options (e.g. VCR's `modes` and `renderer`) must be JSON-serialisable: they decide the
    texts a teacher sees, so they are part of a cache's fingerprint.
    """

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        """The files whose bytes define this split (hashed into cache fingerprints); the same
        `options` as `read` (e.g. VCR `annotations=`, VQA `questions_file=`) pick the files."""
        ...

    def read(
        self, root: Path, split: str, *, skip_bad: bool = False, **options: Any
    ) -> ReadResult: ...

    # Optional: `iter_examples(root, split, *, skip_bad=False, skipped=None, only=None,
    # **options)`, `read`'s examples as a generator with the same refusals (skipped records
    # appended to `skipped`; `only`: a set of ids, the other records passed over unchecked), so
    # a caller that keeps few of them reads a split in little memory; a reader without it is
    # read whole (`Dataset.iter_examples`).
    # Optional: `resolve_options(**options) -> dict`, the options with defaults filled in and
    # values normalised, so that spelling out a default does not change a cache fingerprint
    # (`madcache.cache.fingerprint.resolved_read_options`); the built-in readers build it with
    # `reader_options` and read with what it returns.


class StreamingReader:
    """A reader whose `read` is its `iter_examples` collected (the built-in readers): one
    implementation of the two forms, so they cannot disagree."""

    def read(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> ReadResult:
        skipped: list[BadRecord] = []
        examples = list(
            self.iter_examples(root, split, skip_bad=skip_bad, skipped=skipped, **options)
        )
        return ReadResult(examples, skipped)


def reader_options(
    dataset: str,
    options: Mapping[str, Any],
    defaults: Mapping[str, Any],
    **normalise: Callable[[Any], Any],
) -> dict[str, Any]:
    """A built-in reader's options: `defaults` updated with `options` (an unknown option names
    the valid ones), each option in `normalise` passed through its function (which refuses a
    bad value), and `check_files` read as a boolean (it may come from the command line as
    text)."""
    resolved = check_options(dataset, options, defaults)
    for key, function in normalise.items():
        resolved[key] = function(resolved[key])
    resolved["check_files"] = as_bool(resolved["check_files"], "check_files")
    return resolved


@dataclass(frozen=True)
class Dataset:
    """One dataset: its reader and every fact the later stages need about it.

    - `task`: what a student's head predicts, one of `TASKS` (also the adapters' output layout).
    - `score`: the metrics of predictions (`Scorer`), the one scoring of students, adapters and
      zero-shot teachers.
    - `sample`: the low-shot sampler (`madcache.data.lowshot`).
    - `categories`: the categories low-shot splits draw from and reports break results down by;
      `label_names`: the class names (required for a classification dataset: their count is
      the number of classes).
    - `chance`: the chance level of each metric, shown beside zero-shot results.
    - `teacher_logits`: the extraction protocol that scores its texts with a joint-space teacher
      (a name in `madcache.extraction.protocols.PROTOCOLS`; `"none"`: no teacher logits).
    - `zero_shot`: how the teacher alone is evaluated from a cache (a name in
      `madcache.evaluation.zeroshot.ZERO_SHOT`; None: no zero-shot evaluation).
    - `submission`: the file format `madcache predict` writes for a leaderboard and
      `score_predictions` reads back (a name in `madcache.evaluation.predict.SUBMISSION_FORMATS`;
      None: no submission format).
    - `sm`: a shortcut-mitigated version of its splits exists (`madcache.data.sm`).
    - `extraction_options`: reader options extraction adds (overridden by the user's), e.g.
      `check_files` so a missing image is a bad record at read time.
    - `label_free`: an example as adaptive finetuning (no task labels) may see it, or None to
      leave it out (VCR leaves out QA->R: its context holds the correct answer).
    """

    name: str
    reader: Reader
    task: str
    score: Scorer
    sample: Sampler
    categories: tuple[str, ...]
    label_names: tuple[str, ...] | None = None
    chance: Mapping[str, float] = field(default_factory=dict)
    teacher_logits: str = "none"
    zero_shot: str | None = None
    submission: str | None = None
    sm: bool = False
    extraction_options: Mapping[str, Any] = field(default_factory=dict)
    label_free: Callable[[Example], Example | None] = without_labels

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(
                f"dataset '{self.name}': unknown task {self.task!r}; valid: {', '.join(TASKS)}"
            )
        if self.task == CLASSIFICATION and not self.label_names:
            raise ConfigError(
                f"dataset '{self.name}': a classification dataset needs label_names (one per class)"
            )

    def read(self, root: Path, split: str, *, skip_bad: bool = False, **options: Any) -> ReadResult:
        return self.reader.read(Path(root), split, skip_bad=skip_bad, **options)

    def iter_examples(
        self, root: Path, split: str, *, only: Collection[str] | None = None, **options: Any
    ) -> Iterator[Example]:
        """The examples of `read` one at a time: the reader's `iter_examples` where it has one
        (the built-in readers), else `read`'s list. Bad records raise, as `read` does. `only`:
        just the examples with these ids (the reader may pass over the other records
        unchecked: for a second read, after a whole one)."""
        stream = getattr(self.reader, "iter_examples", None)
        if stream is None:
            examples = self.read(root, split, **options).examples
            return iter(examples if only is None else [ex for ex in examples if ex.id in only])
        return stream(Path(root), split, only=only, **options)

    def annotation_files(self, root: Path, split: str, **options: Any) -> list[Path]:
        return self.reader.annotation_files(Path(root), split, **options)

    def resolve_options(self, **options: Any) -> dict[str, Any]:
        """The reader's options with defaults filled in and values normalised (the reader's
        optional `resolve_options`; else as given), so a default spelled out is no difference."""
        resolve = getattr(self.reader, "resolve_options", None)
        return resolve(**options) if resolve is not None else dict(options)

    def check_sm(self) -> None:
        """Refuse shortcut mitigation for a dataset that has no SM version."""
        if not self.sm:
            raise ConfigError(
                f"shortcut mitigation (SM) is not defined for dataset "
                f"'{self.name}' (datasets with SM: "
                f"{', '.join(n for n in DATASETS if DATASETS.get(n).sm) or 'none'})"
            )


DATASETS: Registry[Dataset] = Registry("dataset", group="madcache.datasets")
