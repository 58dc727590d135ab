"""Adaptive finetuning's label-free views carry nothing of a label: the views of a split and of
the same split relabelled are identical, field by field (raw record and id included)."""

import json
import shutil

import pytest

from madcache.data import read_examples
from madcache.train.setup import label_free_examples


def _relabel_vcr(root):
    path = root / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["answer_label"] = (record["answer_label"] + 1) % 4
        record["rationale_label"] = (record["rationale_label"] + 1) % 4
        record["answer_orig"] = record["rationale_orig"] = "relabelled"
        for key in (
            "answer_sources",
            "answer_match_iter",
            "rationale_sources",
            "rationale_match_iter",
        ):
            record[key] = record[key][::-1]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


SNLI_VE_NEXT = {"entailment": "neutral", "neutral": "contradiction", "contradiction": "entailment"}


def _relabel_snli_ve(root):
    path = root / "snli_ve_train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        new = SNLI_VE_NEXT[record["gold_label"]]
        record["gold_label"], record["annotator_labels"] = new, [new]
        record["pairID"] = record["pairID"][:-1] + new[0]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _relabel_vqa(root):
    path = root / "v2_mscoco_train2014_annotations.json"
    data = json.loads(path.read_text())
    annotations = data["annotations"]
    moved = ("answers", "multiple_choice_answer", "answer_type")
    rotated = [{k: a[k] for k in moved if k in a} for a in annotations[1:] + annotations[:1]]
    for annotation, answers in zip(annotations, rotated):
        annotation.update(answers)
    path.write_text(json.dumps(data))


RELABEL = {"vcr": _relabel_vcr, "snli-ve": _relabel_snli_ve, "vqa": _relabel_vqa}


@pytest.mark.parametrize("dataset", sorted(RELABEL))
def test_label_free_views_do_not_depend_on_the_labels(dataset, demo_root, tmp_path):
    folder = dataset
    shutil.copytree(
        demo_root / folder,
        tmp_path / folder,
        symlinks=True,
        ignore=shutil.ignore_patterns("*.jpg", "*.png"),
    )
    RELABEL[dataset](tmp_path / folder)
    original = read_examples(dataset, demo_root / folder, "train").examples
    relabelled = read_examples(dataset, tmp_path / folder, "train").examples
    assert len(original) == len(relabelled) and any(  # the relabelling changed labels
        a.label != b.label or a.answers != b.answers for a, b in zip(original, relabelled)
    )

    views, original_ids = label_free_examples(dataset, original)
    relabelled_views, relabelled_ids = label_free_examples(dataset, relabelled)
    assert views == relabelled_views and [v.raw for v in views] == [v.raw for v in relabelled_views]
    assert all(v.label is None and v.answer_scores is None and not v.answers for v in views)
    assert sorted(original_ids.values()) == sorted(
        ex.id for ex in original if not ex.id.endswith(":qar")
    )
