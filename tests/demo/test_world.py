"""The demo world generator: layout, exact original formats, determinism, reruns, and the
properties the demo relies on (all 7 VCR categories, decidable answers, the SM shortcut)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from madcache.core.errors import ConfigError
from madcache.demo.world import generate_demo_world
from madcache.demo.world.vcr_files import KINDS
from madcache.demo.world.world import VCR_SCENES, sample_scene

VCR_KEYS = (
    "movie",
    "objects",
    "interesting_scores",
    "answer_likelihood",
    "img_fn",
    "metadata_fn",
    "answer_orig",
    "question_orig",
    "rationale_orig",
    "question",
    "answer_match_iter",
    "answer_sources",
    "answer_choices",
    "answer_label",
    "rationale_choices",
    "rationale_sources",
    "rationale_match_iter",
    "rationale_label",
    "img_id",
    "question_number",
    "annot_id",
    "match_fold",
    "match_index",
)
VCR_TEST_KEYS = (
    "movie",
    "objects",
    "interesting_scores",
    "answer_likelihood",
    "img_fn",
    "metadata_fn",
    "question",
    "answer_choices",
    "rationale_choices",
    "img_id",
    "question_number",
    "annot_id",
    "match_fold",
    "match_index",
)
SNLI_KEYS = (
    "Flickr30K_ID",
    "annotator_labels",
    "captionID",
    "gold_label",
    "pairID",
    "sentence1",
    "sentence1_binary_parse",
    "sentence1_parse",
    "sentence2",
    "sentence2_binary_parse",
    "sentence2_parse",
)


@pytest.fixture
def world(demo_worlds) -> tuple[Path, dict]:
    """The shared small world of seed 0 (tests/conftest.py) and its generation's summary."""
    return demo_worlds("small", seed=0)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "DONE"
    }


def test_layout_and_summary(world):
    root, summary = world
    assert summary["skipped"] is False and summary["size"] == "small" and summary["seed"] == 0
    for name in (
        "vcr/train.jsonl",
        "vcr/val.jsonl",
        "vcr/test.jsonl",
        "snli-ve/snli_ve_train.jsonl",
        "snli-ve/snli_ve_dev.jsonl",
        "snli-ve/snli_ve_test.jsonl",
        "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
        "vqa/v2_mscoco_train2014_annotations.json",
        "vqa/v2_OpenEnded_mscoco_val2014_questions.json",
        "vqa/v2_mscoco_val2014_annotations.json",
        "vqa/answers.txt",
        "captions/captions.jsonl",
        "DONE",
    ):
        assert (root / name).is_file(), name
    assert not (root / "IN_PROGRESS").exists()
    counts = summary["counts"]
    assert counts["vcr"]["train"] == {"questions": 120, "images": 40}
    assert len(_lines(root / "vcr/train.jsonl")) == 120
    assert len(list((root / "vcr/vcr1images").rglob("*.jpg"))) == 40 + 12 + 8
    assert counts["snli-ve"]["train"] == {"pairs": 90, "images": 30}
    assert counts["captions"] == {"images": 80, "captions": 400}


def test_vcr_records_have_the_original_keys_and_valid_references(world):
    root, _ = world
    for split in ("train", "val", "test"):
        records = _lines(root / "vcr" / f"{split}.jsonl")
        assert [r["annot_id"] for r in records] == [f"{split}-{i}" for i in range(len(records))]
        for record in records:
            assert tuple(record) == (VCR_TEST_KEYS if split == "test" else VCR_KEYS)
            n_objects = len(record["objects"])
            texts = [record["question"], *record["answer_choices"], *record["rationale_choices"]]
            assert len(record["answer_choices"]) == len(record["rationale_choices"]) == 4
            refs = [t for text in texts for t in text if isinstance(t, list)]
            assert refs and all(
                0 <= i < n_objects and isinstance(i, int) for ref in refs for i in ref
            )
            assert all(
                isinstance(t, str) for text in texts for t in text if not isinstance(t, list)
            )
            assert record["objects"].count("person") >= 2
            if split != "test":
                label = record["answer_label"]
                assert record["answer_match_iter"][label] == 0
                assert sorted(record["answer_match_iter"]) == [0, 1, 2, 3]
                assert record["answer_sources"][label] == record["match_index"]
                assert record["rationale_match_iter"][record["rationale_label"]] == 0
                assert any(ch.isdigit() for ch in record["question_orig"])  # "How does 2 feel?"


def test_vcr_metadata_matches_objects(world):
    root, _ = world
    record = _lines(root / "vcr/val.jsonl")[0]
    meta = json.loads((root / "vcr/vcr1images" / record["metadata_fn"]).read_text())
    assert tuple(meta) == ("boxes", "segms", "names", "width", "height")
    assert meta["names"] == record["objects"]
    assert len(meta["boxes"]) == len(meta["segms"]) == len(record["objects"])
    for (x1, y1, x2, y2, score), segm in zip(meta["boxes"], meta["segms"]):
        assert 0 <= x1 < x2 <= meta["width"] and 0 <= y1 < y2 <= meta["height"]
        assert 0.9 <= score < 1
        xs = [x for x, _ in segm[0]]
        assert min(xs) >= int(x1) - 1 and max(xs) <= x2 + 1
    assert (root / "vcr/vcr1images" / record["img_fn"]).is_file()


def test_snli_ve_schema(world):
    root, _ = world
    for split in ("train", "dev", "test"):
        records = _lines(root / "snli-ve" / f"snli_ve_{split}.jsonl")
        assert Counter(r["gold_label"] for r in records) == {
            "entailment": len(records) // 3,
            "neutral": len(records) // 3,
            "contradiction": len(records) // 3,
        }
        for r in records:
            assert tuple(r) == SNLI_KEYS
            assert r["Flickr30K_ID"].isdigit()
            assert re.fullmatch(rf"{r['Flickr30K_ID']}\.jpg#[0-4]r1[enc]", r["pairID"])
            assert r["captionID"] == r["pairID"][:-3]
            assert len(r["annotator_labels"]) == (1 if split == "train" else 5)
            assert Counter(r["annotator_labels"]).most_common(1)[0] == (
                r["gold_label"],
                max(Counter(r["annotator_labels"]).values()),
            )
            assert (root / "snli-ve/flickr30k_images" / f"{r['Flickr30K_ID']}.jpg").is_file()


def test_vqa_schema_and_answer_vocabulary(world):
    from madcache.data.categories import vqa_question_type

    root, _ = world
    from madcache.data.vqa import load_answer_vocab

    vocabulary = (root / "vqa/answers.txt").read_text().splitlines()
    assert vocabulary == sorted(set(vocabulary)) and "yes" in vocabulary
    assert load_answer_vocab(root / "vqa/answers.txt") == vocabulary
    for subtype in ("train2014", "val2014"):
        questions = json.loads(
            (root / f"vqa/v2_OpenEnded_mscoco_{subtype}_questions.json").read_text()
        )
        annotations = json.loads((root / f"vqa/v2_mscoco_{subtype}_annotations.json").read_text())
        assert tuple(questions) == (
            "info",
            "task_type",
            "data_type",
            "license",
            "data_subtype",
            "questions",
        )
        assert tuple(annotations) == ("info", "license", "data_subtype", "annotations")
        assert questions["data_subtype"] == annotations["data_subtype"] == subtype
        by_id = {a["question_id"]: a for a in annotations["annotations"]}
        assert len(by_id) == len(questions["questions"])
        for q in questions["questions"]:
            a = by_id[q["question_id"]]
            assert q["question_id"] // 1000 == q["image_id"] == a["image_id"]
            assert a["question_type"] == vqa_question_type(q["question"])
            assert a["answer_type"] in ("yes/no", "number", "other")
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert {x["answer_confidence"] for x in a["answers"]} <= {"yes", "maybe", "no"}
            assert (
                a["multiple_choice_answer"]
                == Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0]
            )
            if subtype == "train2014":  # the vocabulary holds train answers, never val-only
                assert {x["answer"] for x in a["answers"]} <= set(vocabulary)
            assert (root / "vqa" / subtype / f"COCO_{subtype}_{q['image_id']:012d}.jpg").is_file()


def test_captions_corpus(world):
    from madcache.demo.teacher import read_captions

    root, _ = world
    pairs = read_captions(root)
    assert len(pairs) == 400 and len({image for image, _ in pairs}) == 80
    assert all((root / image).is_file() for image, _ in pairs)
    words = Counter(w for _, caption in pairs for w in re.findall(r"[a-z]+", caption))
    for word in ("red", "circle", "large", "doctor", "angry", "left", "window"):
        assert words[word] > 0, word


def test_readers_load_every_split_and_all_categories_appear(world):
    from madcache.data import read_examples

    root, summary = world
    counts = summary["counts"]
    categories = Counter()
    for split in ("train", "val", "test"):
        result = read_examples("vcr", root / "vcr", split, check_files=True)
        assert result.skipped == []
        qa = [e for e in result.examples if e.id.endswith(":qa")]
        assert len(qa) == counts["vcr"][split]["questions"]
        categories.update(e.category for e in qa)
    assert set(categories) == {
        "explanation",
        "activity",
        "temporal",
        "mental",
        "role",
        "scene",
        "hypothetical",
    }
    assert categories.most_common(1)[0][0] == "explanation"
    for split in ("train", "dev", "test"):
        result = read_examples("snli-ve", root / "snli-ve", split, check_files=True)
        assert result.skipped == [] and len(result.examples) == counts["snli-ve"][split]["pairs"]
    vqa_categories = Counter()
    for split in ("train", "val"):
        result = read_examples("vqa", root / "vqa", split, check_files=True)
        assert result.skipped == [] and len(result.examples) == counts["vqa"][split]["questions"]
        vqa_categories.update(e.category for e in result.examples)
    assert set(vqa_categories) == {
        "yes/no",
        "what",
        "what color",
        "how many",
        "where",
        "who",
        "why",
        "other",
    }


def test_distractors_use_values_nobody_in_the_image_has():
    from madcache.demo.world.vcr_files import _choice_set

    rng = np.random.default_rng(5)
    for _ in range(30):
        scene = sample_scene(rng, VCR_SCENES)
        for kind in KINDS:
            person = scene.persons[0]
            answers, _ = _choice_set(kind, scene, person, rng)
            texts = [template for template, _ in answers]
            truths = {
                kind.answer.replace("{v}", kind.value(kind.attribute.key(p), p.size))
                for p in scene.persons
            }
            assert texts[0] in truths and not truths & set(texts[1:])
            assert answers[0][1] == {"x": scene.index(person)}


def test_correct_answers_overlap_the_question_and_sm_removes_it(world):
    from madcache.data.sm import mitigate_record

    root, _ = world

    def overlap_pick(record: dict) -> int:
        asked = {i for t in record["question"] if isinstance(t, list) for i in t}
        overlaps = [
            sum(i in asked for t in choice if isinstance(t, list) for i in t)
            for choice in record["answer_choices"]
        ]
        return int(np.argmax(overlaps))

    records = _lines(root / "vcr/train.jsonl")
    standard = np.mean([overlap_pick(r) == r["answer_label"] for r in records])
    split = [done.record for done in map(mitigate_record, records) if done is not None]
    mitigated = np.mean([overlap_pick(m) == m["answer_label"] for m in split])
    assert len(split) > 0.9 * len(records)  # the demo questions ask about one person
    assert 0.45 < standard < 0.7 and mitigated < 0.1  # chance: 0.25


def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    root, _ = world
    again = tmp_path / "again"
    generate_demo_world(again, size="small", seed=0)
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    generate_demo_world(other, size="small", seed=1)
    assert (other / "vcr/train.jsonl").read_bytes() != (root / "vcr/train.jsonl").read_bytes()
    assert (other / "captions/images/000000.jpg").read_bytes() != (
        root / "captions/images/000000.jpg"
    ).read_bytes()


def test_rerun_on_a_complete_folder_is_a_no_op(world):
    root, summary = world
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = generate_demo_world(root, size="small", seed=0)
    assert again["skipped"] is True and again["counts"] == summary["counts"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="seed=0"):
        generate_demo_world(root, size="small", seed=1)


def test_partial_folder_is_regenerated_and_foreign_data_refused(world, tmp_path):
    root, _ = world
    partial = tmp_path / "partial"
    (partial / "vcr").mkdir(parents=True)
    (partial / "vcr" / "stale.jsonl").write_text("{}\n")
    (partial / "IN_PROGRESS").write_text("{}\n")
    summary = generate_demo_world(partial, size="small", seed=0)
    assert summary["skipped"] is False and not (partial / "vcr" / "stale.jsonl").exists()
    assert _digest(partial) == _digest(root)

    foreign = tmp_path / "real-data"
    (foreign / "vqa").mkdir(parents=True)
    with pytest.raises(ConfigError, match="vqa"):
        generate_demo_world(foreign, size="small", seed=0)
    assert list((foreign / "vqa").iterdir()) == []


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="small, default"):
        generate_demo_world(tmp_path / "x", size="huge")


def test_cli_writes_then_skips(world):
    from madcache.cli import cli

    root, _ = world
    result = CliRunner().invoke(
        cli, ["demo", "data", "--out", str(root), "--size", "small", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "already complete" in result.output
    result = CliRunner().invoke(cli, ["demo", "data", "--out", str(root), "--size", "default"])
    assert result.exit_code == 2 and "already holds a demo world" in result.output


def test_real_files_have_the_same_keys(world, real_root):
    root, _ = world
    real_vcr = json.loads(
        (real_root / "vcr/annotations/vcr_cs_val_original.jsonl").read_text().splitlines()[0]
    )
    assert tuple(real_vcr) == VCR_KEYS
    real_snli = _lines(real_root / "snli_ve/allennlp_fixture/sample_pairs.jsonl")[0]
    assert tuple(real_snli) == SNLI_KEYS
    real_ann = json.loads(
        (real_root / "vqa_v2/multimodal_testdata/v2_mscoco_train2014_annotations.json").read_text()
    )
    ours = json.loads((root / "vqa/v2_mscoco_train2014_annotations.json").read_text())
    assert set(real_ann) == set(ours)
    assert set(real_ann["annotations"][0]) == set(ours["annotations"][0])
    official = set(
        (real_root / "vqa_v2/question_types/mscoco_question_types.txt").read_text().splitlines()
    )
    assert {a["question_type"] for a in ours["annotations"]} <= official
