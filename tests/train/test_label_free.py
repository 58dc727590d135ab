"""Adaptive finetuning's label-free views carry nothing of a label: the views of a split and of
the same split relabelled are identical, field by field (raw record and id included)."""

import json
import os
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


@pytest.mark.parametrize("dataset", sorted(RELABEL))
@pytest.mark.parametrize("per_category", [None, 2], ids=["full-split", "low-shot"])
def test_the_training_data_on_disk_is_the_data_in_memory(
    dataset, per_category, demo_root, tmp_path
):
    """`read_training_data` (the split and its AF views written to disk as the reader streams
    them) gives MAD the examples, views, af ids and original ids of the in-memory reading: the
    split in image order, `label_free_examples` over it, and the low-shot subset of the list."""
    from madcache.data.records import image_order
    from madcache.method.methods import get_method
    from madcache.train.config import TrainConfig
    from madcache.train.setup import read_training_data, training_subset

    config = TrainConfig(
        dataset=dataset,
        root=str(demo_root / dataset),
        out=str(tmp_path / "run"),
        method="mad",
        per_category=per_category,
    )
    examples = read_examples(dataset, demo_root / dataset, "train").examples
    subset, split, views = read_training_data(config, get_method("mad"))
    assert os.listdir(tmp_path / "run") == []  # its files have no name
    expected, expected_split = training_subset(config, examples)
    if per_category is None:
        expected = image_order(examples)
    assert [(ex, ex.raw) for ex in subset] == [(ex, ex.raw) for ex in expected]
    assert (split and split.ids) == (expected_split and expected_split.ids)
    in_memory, original_ids = label_free_examples(dataset, image_order(examples))
    assert len(views) == len(in_memory) > 0 and views == in_memory
    assert [ex.raw for ex in views] == [ex.raw for ex in in_memory]
    assert views[-1].id == f"af:{len(views) - 1}" and views[1:3] == in_memory[1:3]
    assert dict(views.original_ids) == dict(original_ids)
    assert list(views.image_ids) == [ex.image_id for ex in in_memory]
    for key in ("af:x", f"af:{len(views)}", "0"):
        with pytest.raises(KeyError):
            views.original_ids[key]
