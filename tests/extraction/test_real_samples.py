"""Extraction on the real VCR / SNLI-VE / VQA v2 samples (skipped where they are absent), and
the same cache from worker processes as from the main process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from madcache.cache.reader import open_cache
from madcache.extraction import ExtractConfig, extract

VCR_LINE = "extracted/val-1_from_iflytek_VLE_examples_VCR_README.jsonl"
VQA_FILES = ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json")


def config(tiny_clip, tmp_path, **options) -> ExtractConfig:
    name, checkpoint = tiny_clip
    return ExtractConfig(
        teacher=name, checkpoint=checkpoint, progress=False, out=tmp_path / "cache", **options
    )


@pytest.mark.real
@pytest.mark.parametrize("store_format", ["zarr", "hdf5"])
def test_vcr_line_with_its_real_image(real_root, tiny_clip, tmp_path, store_format):
    summary = extract(
        config(
            tiny_clip,
            tmp_path,
            dataset="vcr",
            root=real_root / "vcr",
            split=VCR_LINE,
            format=store_format,
        )
    )
    assert summary["examples"] == 2 and summary["images"] == 1  # val-1:qa and val-1:qar
    arrays = open_cache(tmp_path / "cache").arrays()
    assert arrays["example_id"].tolist() == ["val-1:qa", "val-1:qar"]
    assert arrays["logits/iqa"].shape == (2, 4) and arrays["logits/ia"].shape == (2, 4)
    assert np.isfinite(arrays["word_vr"]).all() and arrays["word_feat"].dtype == np.float16
    assert arrays["word_truncated"].any()  # rationales outgrow the tiny 24-token context
    assert arrays["text_truncated"].any()


@pytest.mark.real
def test_snli_ve_allennlp_sample(real_root, tiny_clip, tmp_path):
    extract(
        config(
            tiny_clip,
            tmp_path,
            dataset="snli-ve",
            root=real_root / "snli_ve" / "allennlp_fixture",
            split="sample_pairs.jsonl",
        )
    )
    cache = open_cache(tmp_path / "cache")
    arrays = cache.arrays()
    assert len(arrays["example_id"]) == 16 and arrays["image_id"].tolist() == [
        "2248275918",
        "402978771",
    ]
    centres = cache.manifest["extra"]["kmeans_centres"]
    assert len(centres) == 3 and centres == sorted(centres, reverse=True)
    assert (np.abs(arrays["similarity"]) <= 1).all()


@pytest.mark.real
def test_vqa_sample_skips_the_question_without_an_image(real_root, tiny_clip, tmp_path, minilm_dir):
    root = tmp_path / "vqa"
    (root / "train2014").mkdir(parents=True)
    for name in VQA_FILES:
        shutil.copy(real_root / "vqa_v2" / "multimodal_testdata" / name, root / name)
    shutil.copy(
        real_root / "vqa_v2" / "images" / "COCO_train2014_000000458752.jpg", root / "train2014"
    )
    extract(
        config(
            tiny_clip,
            tmp_path,
            dataset="vqa",
            root=root,
            split="train",
            skip_bad=True,
            answer_top_k=3,
            sentence_encoder=minilm_dir,
        )
    )
    cache = open_cache(tmp_path / "cache")
    arrays = cache.arrays()
    assert arrays["example_id"].tolist() == ["458752000", "458752001", "458752002", "458752003"]
    assert [r["record_id"] for r in cache.manifest["skipped_records"]] == ["262146000"]
    vocab = cache.manifest["extra"]["answer_vocab"]
    assert arrays["candidates"].shape == (4, 3) and arrays["candidates"].max() < len(vocab)
    assert arrays["logits/template"].shape == (4, 3)


def test_workers_write_the_same_cache_as_the_main_process(cache, toy_root, tiny_clip, tmp_path):
    name, checkpoint = tiny_clip
    outs = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        extract(
            ExtractConfig(
                dataset="toy-vcr",
                root=toy_root,
                split="vcr",
                protocol="vcr",
                teacher=name,
                checkpoint=checkpoint,
                out=out,
                shard_size=4,
                batch_size=3,
                workers=workers,
                progress=False,
            )
        )
        outs.append(open_cache(out).arrays())
    assert sorted(outs[0]) == sorted(outs[1])
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=key)
