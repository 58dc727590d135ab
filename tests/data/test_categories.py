from collections import Counter

import pytest

from madcache.data import read_examples
from madcache.data.categories import (
    VCR_CATEGORIES,
    VQA_CATEGORIES,
    VQA_QUESTION_TYPES,
    VQA_TYPE_TO_CATEGORY,
    vcr_category,
    vqa_category,
    vqa_question_type,
)


@pytest.mark.parametrize(
    "question, category",
    [
        ("What would happen if person1 fell asleep ?", "hypothetical"),
        ("Why is person11 wearing sunglasses inside ?", "explanation"),
        ("What is person1 ' s relation to person4 ?", "role"),
        ("Do person1 and person2 know each other ?", "role"),
        ("What is person3 thinking while person5 shouts at him ?", "mental"),
        ("What will person6 do after unpacking the groceries ?", "temporal"),
        ("Where is person1 now ?", "scene"),
        ("What are person1 and person2 doing ?", "activity"),
        ("Does it look like person2 is sleeping ?", "activity"),
        ("Is person5 in trouble ?", "explanation"),
    ],
)
def test_vcr_patterns_and_precedence(question, category):
    assert vcr_category(question) == category


@pytest.mark.real
def test_vcr_distribution_on_the_real_vcr_cs_questions(real_root):
    result = read_examples(
        "vcr", real_root / "vcr", "annotations/vcr_cs_val_original.jsonl", skip_bad=True, modes="qa"
    )
    counts = Counter(ex.category for ex in result.examples)
    assert counts == {
        "mental": 51,
        "activity": 38,
        "role": 24,
        "explanation": 19,
        "temporal": 15,
        "hypothetical": 5,
    }
    assert set(counts) <= set(VCR_CATEGORIES)


@pytest.mark.real
def test_vqa_types_are_the_official_list(real_root):
    path = real_root / "vqa_v2" / "question_types" / "mscoco_question_types.txt"
    assert list(VQA_QUESTION_TYPES) == path.read_text().splitlines()
    assert Counter(VQA_TYPE_TO_CATEGORY.values()) == {
        "yes/no": 28,
        "what": 21,
        "what color": 5,
        "how many": 3,
        "other": 3,
        "where": 2,
        "why": 2,
        "who": 1,
    }
    assert set(VQA_TYPE_TO_CATEGORY.values()) == set(VQA_CATEGORIES)


@pytest.mark.real
def test_vqa_types_agree_with_the_real_annotations(real_root):
    result = read_examples(
        "vqa",
        real_root / "vqa_v2",
        "train",
        questions_file="multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
        annotations_file="multimodal_testdata/v2_mscoco_train2014_annotations.json",
    )
    import json

    annotations = json.loads(
        (
            real_root / "vqa_v2" / "multimodal_testdata" / "v2_mscoco_train2014_annotations.json"
        ).read_text()
    )["annotations"]
    official = {str(a["question_id"]): a["question_type"] for a in annotations}
    assert {ex.id: vqa_question_type(ex.choices[0].text) for ex in result.examples} == official


@pytest.mark.parametrize(
    "question, qtype, category",
    [
        ("How many people are in the room?", "how many people are in", "how many"),
        ("What is the color of the bus?", "what is the color of the", "what color"),
        ("Is the man happy?", "is the man", "yes/no"),
        ("Could this be Paris?", "could", "yes/no"),
        ("Who is driving?", "who is", "who"),
        ("Why is the dog wet?", "why is the", "why"),
        ("Where are the keys?", "where are the", "where"),
        ("What sport is this?", "what sport is", "what"),
        ("Which way is up?", "which", "other"),
        ("How old is she?", "how", "other"),
        ("Name the animal.", "none of the above", "other"),
    ],
)
def test_vqa_longest_prefix_and_category(question, qtype, category):
    assert vqa_question_type(question) == qtype
    assert vqa_category(question) == category
