"""Zero-shot from the cache: hand-computed accuracies on hand-built logits, near chance on random
logits, and `run_zero_shot` on a real (tiny) cache written with the cache writer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from madcache.core.errors import ConfigError, UnknownNameError
from madcache.data import DATASETS, Example
from madcache.data.metrics import score_accuracy, score_vcr, score_vqa
from madcache.evaluation.zeroshot import (
    logits_zero_shot,
    run_zero_shot,
    vqa_predictions,
    vqa_zero_shot,
    zero_shot_markdown,
)

CHANCE = {name: DATASETS.get(name).chance for name in ("vcr", "snli-ve")}


def examples(ids, labels, categories, groups=None, answers=None, dataset="vcr"):
    """Stand-in examples, as `index_examples` builds them from a cache index."""
    n = len(ids)
    return [
        Example(
            id=i,
            dataset=dataset,
            split="val",
            image_id="",
            image_path="",
            choices=(),
            label=y,
            category=c,
            group=g,
            answers=tuple(a),
        )
        for i, y, c, g, a in zip(ids, labels, categories, groups or [""] * n, answers or [()] * n)
    ]


def write_cache(
    path,
    *,
    dataset,
    ids,
    labels,
    categories,
    logits,
    groups=None,
    C=4,
    similarity=None,
    centres=None,
    candidates=None,
    extra=None,
    split="val",
    seed=0,
):
    """A one-shard cache: one image per example, C texts each, random features."""
    from madcache.cache.writer import CacheWriter

    rng = np.random.default_rng(seed)
    n = len(ids)
    arrays = {
        "example_id": np.array(ids, dtype=str),
        "image_id": np.array([f"img{i}" for i in range(n)], dtype=str),
        "image_feat": rng.normal(size=(n, 6)).astype(np.float16),
        "text_key": np.array([f"t{i}" for i in range(n * C)], dtype=str),
        "text_eos": rng.normal(size=(n * C, 5)).astype(np.float16),
        "example_image": np.arange(n, dtype=np.int64),
        "example_texts": np.arange(n * C, dtype=np.int64).reshape(n, C),
    }
    for name, values in (logits or {}).items():
        arrays[f"logits/{name}"] = np.asarray(values, dtype=np.float32)
    if similarity is not None:
        arrays["similarity"] = np.asarray(similarity, dtype=np.float32)
    if candidates is not None:
        arrays["candidates"] = np.asarray(candidates, dtype=np.int64)
    manifest = {
        "fingerprint": {"dataset": {"name": dataset, "split": split, "read_options": {}}},
        "dataset": dataset,
        "split": split,
        "num_choices": C,
        "dims": {"image": 6, "text": 5},
        "settings": {"default_logits": None},
        "teachers": {"vision": "tiny", "text": "tiny"},
        "num_shards": 1,
    }
    writer = CacheWriter.open(path, manifest=manifest, format="hdf5")
    writer.write_shard(
        0,
        arrays,
        index_columns={
            "category": list(categories),
            "label": list(labels),
            "group": list(groups) if groups is not None else [""] * n,
        },
    )
    kmeans = {"kmeans_centres": centres, "kmeans_scale": 100.0} if centres else {}
    writer.finish(extra={**kmeans, **(extra or {})})
    return path


def vcr_world():
    """3 questions (a, b, c), each with a :qa and a :qar example."""
    ids = ["a:qa", "a:qar", "b:qa", "b:qar", "c:qa", "c:qar"]
    groups = ["a", "a", "b", "b", "c", "c"]
    labels = [0, 1, 2, 3, 1, 0]
    categories = ["activity", "activity", "mental", "mental", "activity", "activity"]
    eye = np.eye(4, dtype=np.float32)
    # ia: a right/right, b right/wrong, c wrong/right -> Q2A 2/3, QA2R 2/3, Q2AR 1/3
    ia = np.stack([eye[0], eye[1], eye[2], eye[0], eye[3], eye[0]])
    # iqa: every prediction 0 -> Q2A 1/3 (a), QA2R 1/3 (c), Q2AR 0
    iqa = np.tile(eye[0], (6, 1))
    return ids, groups, labels, categories, {"ia": ia, "iqa": iqa}


def test_vcr_scores_hand_computed():
    ids, groups, labels, categories, logits = vcr_world()
    result = logits_zero_shot(
        examples(ids, labels, categories, groups), logits, score_vcr, order=("iqa", "ia")
    )
    assert list(result) == ["iqa", "ia"]
    assert result["ia"]["overall"] == pytest.approx(
        {"q2a": 200 / 3, "qa2r": 200 / 3, "q2ar": 100 / 3, "n": 3}
    )
    assert result["iqa"]["overall"] == pytest.approx(
        {"q2a": 100 / 3, "qa2r": 100 / 3, "q2ar": 0.0, "n": 3}
    )
    # activity = questions a and c, mental = b
    assert result["ia"]["by_category"]["activity"] == pytest.approx(
        {"q2a": 50.0, "qa2r": 100.0, "q2ar": 50.0, "n": 2}
    )
    assert result["ia"]["by_category"]["mental"] == pytest.approx(
        {"q2a": 100.0, "qa2r": 0.0, "q2ar": 0.0, "n": 1}
    )


def test_snli_ve_kmeans_accuracy_per_class():
    labels = [0, 0, 1, 2, 2, 1]
    kmeans = np.eye(3)[[0, 1, 1, 2, 0, 1]]
    categories = [
        "entailment",
        "entailment",
        "neutral",
        "contradiction",
        "contradiction",
        "neutral",
    ]
    result = logits_zero_shot(
        examples([f"p{i}" for i in range(6)], labels, categories),
        {"kmeans": kmeans},
        score_accuracy,
    )["kmeans"]
    assert result["overall"]["accuracy"] == pytest.approx(400 / 6)
    assert result["by_category"]["entailment"]["accuracy"] == pytest.approx(50.0)
    assert result["by_category"]["neutral"]["accuracy"] == pytest.approx(100.0)
    assert result["by_category"]["contradiction"]["accuracy"] == pytest.approx(50.0)


def test_random_logits_are_near_chance():
    rng = np.random.default_rng(0)
    n = 3000
    ids = [f"q{i // 2}:{'qa' if i % 2 == 0 else 'qar'}" for i in range(2 * n)]
    groups = [f"q{i // 2}" for i in range(2 * n)]
    labels = rng.integers(0, 4, 2 * n).tolist()
    result = logits_zero_shot(
        examples(ids, labels, ["x"] * (2 * n), groups),
        {"ia": rng.normal(size=(2 * n, 4))},
        score_vcr,
    )["ia"]["overall"]
    assert abs(result["q2a"] - CHANCE["vcr"]["q2a"]) < 3
    assert abs(result["qa2r"] - CHANCE["vcr"]["qa2r"]) < 3
    assert abs(result["q2ar"] - CHANCE["vcr"]["q2ar"]) < 2
    snli = logits_zero_shot(
        examples([str(i) for i in range(n)], rng.integers(0, 3, n).tolist(), ["x"] * n),
        {"kmeans": rng.normal(size=(n, 3))},
        score_accuracy,
    )["kmeans"]["overall"]
    assert abs(snli["accuracy"] - CHANCE["snli-ve"]["accuracy"]) < 3


def test_vqa_top_k_prefiltering_keeps_the_first_k_candidates():
    vocab = ["yes", "no", "2", "red"]
    logits = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.1]])
    candidates = np.array([[0, 1, 2], [3, -1, 1]])
    assert vqa_predictions(logits, candidates, vocab, 1) == ["yes", "red"]
    assert vqa_predictions(logits, candidates, vocab, 3) == ["2", "red"]
    answers = [["2"] * 10, ["red"] * 2 + ["blue"] * 8]
    questions = examples(
        ["1", "2"], [None, None], ["number", "color"], answers=answers, dataset="vqa"
    )
    result = vqa_zero_shot(questions, {"template": logits}, candidates, vocab, score_vqa)
    assert set(result) == {"template-top1", "template-top3"}  # only k <= K candidates
    # top-1: "yes" vs ten "2" -> 0; "red" with 2 matches -> mean over 10 LOO sets of min(1, m/3)
    red = (8 * 2 / 3 + 2 * 1 / 3) / 10
    assert result["template-top1"]["overall"]["vqa_accuracy"] == pytest.approx(100 * red / 2)
    assert result["template-top3"]["overall"]["vqa_accuracy"] == pytest.approx(100 * (1 + red) / 2)
    assert result["template-top3"]["by_category"]["number"]["vqa_accuracy"] == pytest.approx(100)


def test_run_zero_shot_from_a_cache_writes_json_and_markdown(tmp_path):
    ids, groups, labels, categories, logits = vcr_world()
    cache = write_cache(
        tmp_path / "cache",
        dataset="vcr",
        ids=ids,
        labels=labels,
        categories=categories,
        groups=groups,
        logits=logits,
    )
    result = run_zero_shot(cache, out=tmp_path / "zs")
    assert result["dataset"] == "vcr" and result["split"] == "val"
    assert result["protocols"]["ia"]["overall"]["q2a"] == pytest.approx(200 / 3)
    assert result["chance"] == {"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25}
    saved = json.loads((tmp_path / "zs" / "zeroshot.json").read_text())
    assert saved["protocols"]["iqa"]["overall"]["q2ar"] == 0.0
    table = (tmp_path / "zs" / "zeroshot.md").read_text()
    assert "| ia | all | 66.67 | 66.67 | 33.33 | 3 |" in table
    assert "| chance | | 25.00 | 25.00 | 6.25 | |" in table


def test_run_zero_shot_snli_ve_uses_kmeans_from_similarity(tmp_path):
    centres = [0.3, 0.2, 0.1]
    similarity = [0.31, 0.19, 0.12, 0.29]  # nearest centre: 0, 1, 2, 0
    cache = write_cache(
        tmp_path / "c",
        dataset="snli-ve",
        ids=["p0", "p1", "p2", "p3"],
        labels=[0, 1, 1, 2],
        categories=["e", "n", "n", "c"],
        logits={},
        C=1,
        similarity=similarity,
        centres=centres,
    )
    result = run_zero_shot(cache)
    assert result["protocols"]["kmeans"]["overall"]["accuracy"] == pytest.approx(50.0)
    assert "chance" in zero_shot_markdown(result)


def test_vqa_needs_a_root_for_the_human_answers(tmp_path):
    cache = write_cache(
        tmp_path / "c",
        dataset="vqa",
        ids=["1", "2"],
        labels=[None, None],
        categories=["yes/no", "number"],
        logits={"template": np.zeros((2, 3))},
        C=1,
        candidates=np.zeros((2, 3)),
        extra={"answer_vocab": ["yes"]},
    )
    with pytest.raises(ConfigError, match="--root"):
        run_zero_shot(cache)


def test_the_protocol_comes_from_the_dataset_spec(tmp_path):
    """A dataset's spec picks its zero-shot protocol and chance levels; the table of protocols
    lists the valid names when a spec names an unknown one."""
    from dataclasses import replace

    ids, groups, labels, categories, logits = vcr_world()
    for name, protocol in (("vcr-zs-nope", "nope"), ("vcr-zs-own-chance", "logits")):
        if name not in DATASETS:
            DATASETS.register(
                name,
                replace(
                    DATASETS.get("vcr"),
                    name=name,
                    zero_shot=protocol,
                    chance={"q2a": 1.0},
                    sm=False,
                ),
            )
        write_cache(
            tmp_path / name,
            dataset=name,
            ids=ids,
            labels=labels,
            categories=categories,
            groups=groups,
            logits=logits,
        )
    with pytest.raises(
        UnknownNameError, match="zero-shot protocol 'nope'. Available: answer-candidates, logits"
    ):
        run_zero_shot(tmp_path / "vcr-zs-nope")
    result = run_zero_shot(tmp_path / "vcr-zs-own-chance")
    assert result["chance"] == {"q2a": 1.0}
    assert result["protocols"]["ia"]["overall"]["q2ar"] == pytest.approx(100 / 3)
