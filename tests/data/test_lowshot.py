import json

import pytest

from madcache.core.errors import ConfigError, DataError
from madcache.data import iter_examples, read_examples
from madcache.data.lowshot import (
    Split,
    index,
    load_split,
    sample_per_category,
    sample_snli_ve,
    sample_vcr,
    sample_vqa,
    save_split,
)
from madcache.data.records import Example, Text


def _example(dataset, id, category, image="i", group="", label=0):
    return Example(
        id=id,
        dataset=dataset,
        split="val",
        image_id=image,
        image_path=f"{image}.jpg",
        choices=(Text.from_string("x"),),
        label=label,
        category=category,
        group=group,
    )


def _vcr(questions):
    """questions: {annot_id: category} -> qa + qar examples."""
    return [
        _example("vcr", f"{a}:{m}", c, group=a) for a, c in questions.items() for m in ("qa", "qar")
    ]


def test_vcr_takes_k_questions_per_category_with_both_modes_and_records_shortfalls():
    examples = _vcr({f"q{i}": "mental" for i in range(10)} | {"r1": "role"})
    split = sample_vcr(examples, k=3, seed=7)
    assert split.counts == {"mental": 3, "role": 1}
    assert split.example_counts == {"mental": 6, "role": 2}
    assert split.shortfalls == {"role": {"wanted": 3, "available": 1}}
    groups = {i.split(":")[0] for i in split.ids}
    assert {f"{g}:{m}" for g in groups for m in ("qa", "qar")} == set(split.ids)
    assert split.params == {"per_category": 3, "seed": 7, "unit": "group"}
    assert split.ids == [ex.id for ex in examples if ex.id in set(split.ids)]  # source order
    again = sample_per_category(examples, k=3, seed=7)
    assert again.ids == split.ids
    others = [sample_vcr(examples, k=3, seed=s).ids for s in range(8)]
    assert len({tuple(ids) for ids in others}) > 1


def test_one_categorys_pool_does_not_change_anothers_sample():
    base = {f"q{i}": "mental" for i in range(10)}
    alone = sample_vcr(_vcr(base), k=2, seed=1).ids
    mixed = sample_vcr(_vcr(base | {f"t{i}": "temporal" for i in range(5)}), k=2, seed=1).ids
    assert [i for i in mixed if i.startswith("q")] == alone


def test_snli_ve_per_class_images_with_their_hypotheses_of_the_class():
    examples = [
        _example("snli-ve", f"{img}#{n}{c}", c, image=img)
        for img, counts in {
            "a": {"entailment": 2, "neutral": 1},
            "b": {"entailment": 1},
            "c": {"contradiction": 3},
        }.items()
        for c, k in counts.items()
        for n in range(k)
    ]
    examples.append(_example("snli-ve", "d#0", "unlabelled", image="d", label=None))
    split = sample_snli_ve(examples, k=5, seed=0)
    assert split.counts == {"contradiction": 1, "entailment": 2, "neutral": 1}
    assert split.example_counts == {"contradiction": 3, "entailment": 3, "neutral": 1}
    assert len(split.ids) == 7 and "d#0" not in split.ids
    assert split.shortfalls["entailment"] == {"wanted": 5, "available": 2}
    assert sample_snli_ve(index(examples), k=5, seed=0) == split


def test_vqa_at_most_two_questions_of_the_type_per_image():
    examples = [
        _example("vqa", f"{img}-{cat}{n}", cat, image=img)
        for img, cat, count in (("a", "what", 3), ("b", "what", 1), ("a", "why", 1))
        for n in range(count)
    ]
    split = sample_vqa(examples, k=2, seed=4)
    assert split.counts == {"what": 2, "why": 1}
    assert split.example_counts == {"what": 3, "why": 1}
    assert len([i for i in split.ids if i.startswith("a-what")]) == 2 and "b-what0" in split.ids
    assert split.params["questions_per_image"] == 2
    assert sample_vqa(index(examples), k=2, seed=4) == split
    with pytest.raises(ConfigError, match="k must be >= 1"):
        sample_vqa(examples, k=0, seed=1)


def test_save_load_round_trip_and_validation(tmp_path):
    split = sample_vcr(_vcr({"q1": "mental", "q2": "role"}), k=1, seed=3)
    path = save_split(split, tmp_path / "s" / "split.json")
    assert load_split(path) == split and Split.load(path) == split
    data = json.loads(path.read_text())
    data["ids"].append("extra:qa")
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="example_counts add up to 4 but there are 5 ids"):
        load_split(path)
    path.write_text(json.dumps({"ids": []}))
    with pytest.raises(DataError, match="not a madcache split file"):
        load_split(path)


@pytest.mark.real
def test_real_vcr_cs_split_is_exact(real_root):
    examples = read_examples(
        "vcr", real_root / "vcr", "annotations/vcr_cs_val_original.jsonl", skip_bad=True
    ).examples
    split = sample_per_category(examples, k=10, seed=0)
    assert sample_per_category(index(examples), k=10, seed=0) == split  # the slim index
    assert split.counts == {
        "activity": 10,
        "explanation": 10,
        "hypothetical": 5,
        "mental": 10,
        "role": 10,
        "temporal": 10,
    }
    assert len(split.ids) == 2 * 55 == sum(split.example_counts.values())
    assert split.shortfalls == {"hypothetical": {"wanted": 10, "available": 5}}
    assert split.ids == sample_per_category(examples, k=10, seed=0).ids


@pytest.mark.real
def test_real_snli_ve_split(real_root):
    examples = read_examples(
        "snli-ve", real_root / "snli_ve" / "allennlp_fixture", "sample_pairs.jsonl"
    ).examples
    split = sample_per_category(examples, k=1, seed=3)
    assert sample_per_category(index(examples), k=1, seed=3) == split
    only = iter_examples(
        "snli-ve",
        real_root / "snli_ve" / "allennlp_fixture",
        "sample_pairs.jsonl",
        only=set(split.ids),
    )
    assert [ex.id for ex in only] == split.ids
    assert split.example_counts == {"contradiction": 4, "entailment": 1, "neutral": 6}
    assert "402978771.jpg#1r1e" in split.ids
