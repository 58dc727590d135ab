"""`hf-clip:<dir>` and `siglip:<dir>`: transformers CLIP / SigLIP teachers from local directories.

The central check: a tiny open_clip CLIP and the same weights converted to a `CLIPModel`
directory (tests/teachers/conftest.py) give the same cached targets."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from madcache.core.errors import CheckpointNotFoundError, ConfigError
from madcache.data.records import Text
from madcache.teachers import TEACHERS, Teacher, load_teacher

TEXTS = [
    Text.from_string("a red car parked near the old house"),
    Text.from_string("Yes! person1 isn't here, is she?"),
]
COMPARED = (
    "image_feat",
    "text_eos",
    "word_feat",
    "word_vr",
    "word_score",
    "logits/iqa",
    "logits/ia",
)
EXACT = (
    "example_id",
    "image_id",
    "text_key",
    "word_offsets",
    "word_span",
    "word_truncated",
    "text_truncated",
    "word_yake",
)
VCR_LINE = "extracted/val-1_from_iflytek_VLE_examples_VCR_README.jsonl"


def test_names_are_registered_and_missing_directories_fail_at_once(tmp_path):
    assert {"hf-clip:<dir>", "siglip:<dir>"} <= set(TEACHERS.names())
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        load_teacher(f"hf-clip:{tmp_path}")
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        load_teacher(f"siglip:{tmp_path}")


def test_a_siglip_directory_is_refused_as_clip(siglip_dir):
    with pytest.raises(ConfigError, match="siglip model, not clip"):
        load_teacher(f"hf-clip:{siglip_dir}")


def test_clip_features_equal_the_open_clip_twin(clip_pair):
    config, checkpoint, hf_dir = clip_pair
    ours = load_teacher(f"openclip-config:{config}", checkpoint=checkpoint)
    hf = load_teacher(f"hf-clip:{hf_dir}")
    assert isinstance(hf, Teacher) and hf.joint_space and hf.image_dim == hf.text_dim == 16
    assert hf.logit_scale == pytest.approx(np.exp(3.0)) == ours.logit_scale
    assert hf.logit_bias == 0.0
    a, b = ours.text_processor()(TEXTS), hf.text_processor()(TEXTS)
    width = b.input_ids.shape[1]
    assert torch.equal(
        a.input_ids[:, :width] * a.attention_mask[:, :width], b.input_ids * b.attention_mask
    )
    assert torch.equal(a.token_word[:, :width], b.token_word)
    ea, eb = ours.encode_tokens(a), hf.encode_tokens(b)
    torch.testing.assert_close(eb.eos, ea.eos, atol=1e-5, rtol=1e-5)
    for x, y in zip(eb.word_feat, ea.word_feat):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_clip_eos_is_the_models_own_text_features(clip_pair):
    from transformers import AutoTokenizer, CLIPModel

    hf_dir = clip_pair[2]
    teacher = load_teacher(f"hf-clip:{hf_dir}")
    model = CLIPModel.from_pretrained(str(hf_dir)).eval()
    tokens = AutoTokenizer.from_pretrained(str(hf_dir))([TEXTS[0].text], return_tensors="pt")
    with torch.no_grad():
        direct = model.get_text_features(**tokens)
    direct = getattr(direct, "pooler_output", direct)
    enc = teacher.encode_tokens(teacher.text_processor()(TEXTS[:1]))
    torch.testing.assert_close(enc.eos, direct, atol=1e-5, rtol=1e-5)


def _extract(demo_root, teacher: str, out, checkpoint=None):
    from madcache.cache.reader import open_cache
    from madcache.extraction import ExtractConfig, extract

    extract(
        ExtractConfig(
            dataset="vcr",
            root=demo_root / "vcr",
            split="train",
            teacher=teacher,
            checkpoint=checkpoint,
            out=out,
            limit=12,
            shard_size=6,
            progress=False,
        )
    )
    return open_cache(out)


def test_same_weights_give_the_same_cached_targets(clip_pair, demo_root, tmp_path):
    config, checkpoint, hf_dir = clip_pair
    ours = _extract(demo_root, f"openclip-config:{config}", tmp_path / "open_clip", checkpoint)
    hf = _extract(demo_root, f"hf-clip:{hf_dir}", tmp_path / "hf", None)
    a, b = ours.arrays(), hf.arrays()
    assert a["text_truncated"].any()  # the 24-token context cuts rationales: truncation compared
    for key in EXACT:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in COMPARED:
        np.testing.assert_allclose(
            b[key].astype(np.float32), a[key].astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=key
        )
    assert np.abs(a["logits/iqa"]).max() > 1.0  # the scale e^3 ~ 20 was applied on both sides
    assert hf.fingerprint["prompts"]["scale"] == pytest.approx(np.exp(3.0))


@pytest.mark.real
def test_extract_command_with_hf_clip_on_the_real_vcr_line(clip_pair, real_root, tmp_path):
    from madcache.cache.reader import open_cache
    from madcache.cli import cli

    out = tmp_path / "cache"
    result = CliRunner().invoke(
        cli,
        [
            "extract",
            "--teacher",
            f"hf-clip:{clip_pair[2]}",
            "--dataset",
            "vcr",
            "--root",
            str(real_root / "vcr"),
            "--split",
            VCR_LINE,
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    cache = open_cache(out)
    arrays = cache.arrays()
    assert arrays["example_id"].tolist() == ["val-1:qa", "val-1:qar"]
    assert arrays["logits/iqa"].shape == (2, 4) and np.isfinite(arrays["word_vr"]).all()
    assert cache.manifest["teachers"]["vision"] == f"hf-clip:{clip_pair[2]}"
    assert cache.fingerprint["teachers"]["vision"]["model"] == "CLIPModel"


# ----------------------------------------------------------------------------- SigLIP

SIGLIP_CORPUS = [
    "a red car parked near the old house",
    "person one is holding an umbrella",
    "two dogs run across the wet street",
]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """A tiny SiglipModel directory with a tiny SentencePiece tokenizer trained here."""
    spm = pytest.importorskip("sentencepiece", reason="SigLIP's tokenizer needs sentencepiece")
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    root = tmp_path_factory.mktemp("siglip")
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SIGLIP_CORPUS * 20),
        model_writer=model_bytes,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    (root / "spiece.model").write_bytes(model_bytes.getvalue())
    SiglipTokenizer(vocab_file=str(root / "spiece.model"), model_max_length=16).save_pretrained(
        str(root)
    )
    config = SiglipConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
    )
    torch.manual_seed(3)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.5)
    model.save_pretrained(str(root))
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "SiglipImageProcessor",
                "do_resize": True,
                "size": {"height": 32, "width": 32},
                "resample": 3,
                "do_rescale": True,
                "do_normalize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            }
        )
    )
    return root


def test_siglip_features_are_the_models_own(siglip_dir):
    from transformers import AutoTokenizer, SiglipModel

    teacher = load_teacher(f"siglip:{siglip_dir}")
    model = SiglipModel.from_pretrained(str(siglip_dir)).eval()
    texts = [Text.from_string(t) for t in SIGLIP_CORPUS[:2]]
    batch = teacher.text_processor()(texts)
    assert batch.input_ids.shape == (2, 16)  # padded to max_length, as SigLIP was trained
    assert teacher.logit_scale == pytest.approx(np.exp(2.0))
    assert teacher.logit_bias == pytest.approx(-1.5)
    tokens = AutoTokenizer.from_pretrained(str(siglip_dir))(
        [t.text for t in texts],
        padding="max_length",
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    assert torch.equal(batch.input_ids, tokens["input_ids"])
    with torch.no_grad():
        direct = model.get_text_features(input_ids=tokens["input_ids"])
        tokens_out = model.text_model(input_ids=tokens["input_ids"]).last_hidden_state
    direct = getattr(direct, "pooler_output", direct)
    enc = teacher.encode_tokens(batch)
    torch.testing.assert_close(enc.eos, direct, atol=1e-5, rtol=1e-5)
    owner = batch.token_word[0]
    projected = model.text_model.head(tokens_out[0])
    kept = [i for i in range(len(texts[0].words)) if (owner == i).any()]
    assert kept and enc.word_truncated[0].tolist() == [
        i not in kept for i in range(len(texts[0].words))
    ]
    for i in kept:
        torch.testing.assert_close(
            enc.word_feat[0][i], projected[owner == i].mean(0), atol=1e-5, rtol=1e-5
        )


def test_siglip_punctuation_words_have_no_tokens_and_are_flagged(siglip_dir):
    teacher = load_teacher(f"siglip:{siglip_dir}")
    text = Text.from_string("a car, a red one!")
    enc = teacher.encode_tokens(teacher.text_processor()([text]))
    punctuation = [w.text in {",", "!"} for w in text.words]
    assert enc.word_truncated[0].tolist() == punctuation


def test_siglip_logits_carry_the_bias(siglip_dir, demo_root, tmp_path):
    cache = _extract(demo_root, f"siglip:{siglip_dir}", tmp_path / "siglip")
    arrays = cache.arrays()
    settings = cache.fingerprint["prompts"]
    assert settings["scale"] == pytest.approx(np.exp(2.0)) and settings["bias"] == pytest.approx(
        -1.5
    )
    image = torch.from_numpy(arrays["image_feat"].astype(np.float32))
    eos = torch.from_numpy(arrays["text_eos"].astype(np.float32))
    first = arrays["example_texts"][0]
    cos = torch.nn.functional.cosine_similarity(eos[first], image[arrays["example_image"][0]][None])
    np.testing.assert_allclose(
        arrays["logits/iqa"][0], (np.exp(2.0) * cos - 1.5).numpy(), atol=2e-2
    )
