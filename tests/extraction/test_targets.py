"""Every cached target equals a direct computation with the teacher (fp16 tolerance)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from madcache.data import read_examples
from madcache.data.prompts import question_to_statement
from madcache.extraction import ExtractConfig, extract, protocols
from madcache.extraction.scores import combine_scores, content_words, yake_word_scores
from madcache.teachers import load_teacher

FP16 = {"rtol": 2e-3, "atol": 2e-3}


@pytest.fixture(scope="module")
def teacher(tiny_clip):
    name, checkpoint = tiny_clip
    return load_teacher(name, checkpoint=checkpoint)


def run(cache, tmp_path, tiny_clip, toy_root, dataset: str, **options):
    name, checkpoint = tiny_clip
    config = ExtractConfig(
        dataset=f"toy-{dataset}",
        root=toy_root,
        split=dataset,
        protocol={"snli": "snli-ve"}.get(dataset, dataset),
        teacher=name,
        checkpoint=checkpoint,
        out=tmp_path / dataset,
        shard_size=5,
        batch_size=4,
        progress=False,
        **options,
    )
    summary = extract(config)
    return summary, cache.shards(config.out), cache.manifest(config.out)


@pytest.fixture(scope="module")
def vcr(cache, tmp_path_factory, tiny_clip, toy_root):
    return run(cache, tmp_path_factory.mktemp("vcr"), tiny_clip, toy_root, "vcr")


def image_embedding(teacher, toy_root, image_id: str) -> torch.Tensor:
    with Image.open(toy_root / "images" / f"{image_id}.png") as image:
        pixels = teacher.image_transform()(image.convert("RGB"))
    return teacher.encode_images(pixels.unsqueeze(0))[0]


def direct_text(teacher, text) -> tuple[torch.Tensor, torch.Tensor]:
    """(EOS, per-word means of projected sub-token features), computed from the model."""
    batch = teacher.text_processor()([text])
    model = teacher.model
    with torch.no_grad():
        ids = batch.input_ids
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))[0]
        x = x @ model.text_projection
    owner = batch.token_word[0]
    words = torch.stack([x[owner == w].mean(0) for w in range(len(text.words))])
    return x[ids[0].argmax()], words


def rows_by_text(shard, examples):
    """(example, choice, text row) for every scored text of a shard."""
    by_id = {ex.id: ex for ex in examples}
    for n, eid in enumerate(shard["example_id"]):
        for c, row in enumerate(shard["example_texts"][n]):
            yield by_id[str(eid)], c, int(row)


@pytest.fixture(scope="module")
def toy_vcr_examples(toy_root):
    return read_examples("toy-vcr", toy_root, "vcr").examples


def test_shards_hold_whole_images_sorted_by_id(vcr):
    summary, shards, _ = vcr
    assert [list(s["image_id"]) for s in shards] == [["im0", "im1"], ["im2", "im3"], ["im4"]]
    assert [list(s["example_id"]) for s in shards][0] == [
        "v0:qa",
        "v5:qa",
        "v10:qa",
        "v2:qa",
        "v7:qa",
    ]
    assert summary["examples"] == 12 and summary["shards"] == 3 and summary["images"] == 5
    for shard in shards:
        assert shard["image_feat"].dtype == np.float16
        assert shard["example_texts"].shape == (len(shard["example_id"]), 4)


def test_text_eos_and_words_equal_the_teacher(vcr, teacher, toy_vcr_examples):
    _, shards, _ = vcr
    for shard in shards:
        offsets = shard["word_offsets"]
        for example, c, row in rows_by_text(shard, toy_vcr_examples):
            text = example.texts[c]
            eos, words = direct_text(teacher, text)
            assert shard["text_key"][row] == hashlib.sha1(text.text.encode()).hexdigest()
            np.testing.assert_allclose(shard["text_eos"][row], eos.numpy(), **FP16)
            flat = slice(offsets[row], offsets[row + 1])
            np.testing.assert_allclose(shard["word_feat"][flat], words.numpy(), **FP16)
            assert shard["word_span"][flat].tolist() == [[w.start, w.end] for w in text.words]
            assert not shard["word_truncated"][flat].any()


def test_selection_scores_follow_mad(vcr, teacher, toy_root, toy_vcr_examples):
    """yake = 1/(1+score) max over keywords; vr = cos(V_t, word); score = combine_scores."""
    _, shards, _ = vcr
    shard = shards[0]
    offsets = shard["word_offsets"]
    for example, c, row in rows_by_text(shard, toy_vcr_examples):
        text = example.texts[c]
        flat = slice(offsets[row], offsets[row + 1])
        image = image_embedding(teacher, toy_root, example.image_id)
        _, words = direct_text(teacher, text)
        vr = torch.nn.functional.cosine_similarity(words, image.unsqueeze(0), dim=-1)
        yake = yake_word_scores(text)
        np.testing.assert_allclose(shard["word_yake"][flat], yake, rtol=1e-6)
        np.testing.assert_allclose(shard["word_vr"][flat], vr.numpy(), atol=1e-4)
        content = torch.from_numpy(content_words(text))
        np.testing.assert_allclose(
            shard["word_score"][flat],
            combine_scores(vr, torch.from_numpy(yake), content).numpy(),
            atol=1e-4,
        )
        assert (shard["word_score"][flat][~content.numpy()] == 0).all()
    assert shard["word_yake"].max() > 0 and (shard["word_yake"] == 0).any()


def test_a_text_under_two_images_gets_one_row_per_image(vcr):
    _, shards, _ = vcr
    shard = shards[0]
    key = hashlib.sha1(b"What is person 2 doing near the red car? sitting on a bench").hexdigest()
    rows = np.flatnonzero(shard["text_key"] == key)
    assert len(rows) == 2  # im0 and im1
    first, second = (slice(shard["word_offsets"][r], shard["word_offsets"][r + 1]) for r in rows)
    np.testing.assert_array_equal(shard["text_eos"][rows[0]], shard["text_eos"][rows[1]])
    assert not np.allclose(shard["word_vr"][first], shard["word_vr"][second])


def test_vcr_logits_are_the_teachers_own_scale_times_cos(vcr, teacher, toy_root, toy_vcr_examples):
    _, shards, manifest = vcr
    for shard in shards:
        for n, eid in enumerate(shard["example_id"]):
            example = next(ex for ex in toy_vcr_examples if ex.id == eid)
            image = image_embedding(teacher, toy_root, example.image_id)
            for name, texts in (("iqa", example.texts), ("ia", example.choices)):
                eos = torch.stack([direct_text(teacher, t)[0] for t in texts])
                expected = teacher.model.logit_scale.exp() * torch.nn.functional.cosine_similarity(
                    eos, image[None], dim=-1
                )
                np.testing.assert_allclose(shard[f"logits/{name}"][n], expected.numpy(), atol=2e-3)
    assert teacher.logit_scale == pytest.approx(1 / 0.07) and teacher.logit_bias == 0.0
    assert manifest["default_logits"] == "ia" and manifest["num_choices"] == 4
    assert manifest["dims"] == {"image": 16, "text": 16} and manifest["unavailable"] == []


def test_snli_similarity_and_kmeans_centres(cache, tmp_path, tiny_clip, toy_root, teacher):
    _, shards, manifest = run(cache, tmp_path, tiny_clip, toy_root, "snli")
    examples = {ex.id: ex for ex in read_examples("toy-snli", toy_root, "snli").examples}
    sims = []
    for shard in shards:
        for n, eid in enumerate(shard["example_id"]):
            example = examples[str(eid)]
            image = image_embedding(teacher, toy_root, example.image_id)
            eos, _ = direct_text(teacher, example.texts[0])
            expected = torch.nn.functional.cosine_similarity(eos, image, dim=0).item()
            assert shard["similarity"][n] == pytest.approx(expected, abs=1e-5)
        sims.append(shard["similarity"])
    centres = protocols.kmeans_anchors(np.concatenate(sims))
    np.testing.assert_allclose(manifest["extra"]["kmeans_centres"], centres)
    assert manifest["default_logits"] == "kmeans"


class CharEncoder:
    """A deterministic stand-in sentence encoder: normalised letter counts."""

    def encode(self, sentences):
        out = torch.zeros(len(sentences), 26)
        for i, s in enumerate(sentences):
            for ch in s.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return torch.nn.functional.normalize(out + 1e-3, dim=-1)


def test_vqa_candidates_and_template_logits(cache, tmp_path, tiny_clip, toy_root, teacher):
    """The vocabulary extraction builds counts the train split's answers: here the toy's one
    split serves as both (a copy named train)."""
    import shutil

    name, checkpoint = tiny_clip
    toy_root = shutil.copytree(toy_root, tmp_path / "toy")
    shutil.copy(toy_root / "vqa.jsonl", toy_root / "train.jsonl")
    config = ExtractConfig(
        dataset="toy-vqa",
        root=toy_root,
        split="vqa",
        protocol="vqa",
        teacher=name,
        checkpoint=checkpoint,
        out=tmp_path / "vqa",
        answer_top_k=3,
        progress=False,
    )
    extract(config, sentence_encoder=CharEncoder())
    shards, manifest = cache.shards(config.out), cache.manifest(config.out)
    vocab = manifest["extra"]["answer_vocab"]
    assert vocab == ["2", "red", "yes", "3", "blue", "no"]  # by count, then alphabetical
    examples = {ex.id: ex for ex in read_examples("toy-vqa", toy_root, "vqa").examples}
    shard = shards[0]
    questions = [examples[str(e)].choices[0].text for e in shard["example_id"]]
    expected = protocols.prefilter_answers(questions, vocab, CharEncoder(), k=3)
    np.testing.assert_array_equal(shard["candidates"], expected)
    example = examples[str(shard["example_id"][0])]
    image = image_embedding(teacher, toy_root, example.image_id)
    statements = [question_to_statement(questions[0], vocab[a]) for a in expected[0]]
    from madcache.data.records import Text

    eos = torch.stack([direct_text(teacher, Text.from_string(s))[0] for s in statements])
    logits = teacher.logit_scale * torch.nn.functional.cosine_similarity(eos, image[None], dim=-1)
    np.testing.assert_allclose(shard["logits/template"][0], logits.numpy(), atol=2e-3)
    assert manifest["default_logits"] == "template"
