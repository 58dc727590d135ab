from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from madcache.core.errors import CheckpointNotFoundError
from madcache.data.records import Text
from madcache.teachers import load_teacher

TEXT = Text.from_string("The skateboarder's jump looks unbelievably high, doesn't it?")


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    model = ViTModel(config).eval()
    root = tmp_path_factory.mktemp("vit")
    model.save_pretrained(root)
    return root, model


def test_vit_image_feature_is_last_layer_cls(vit_dir):
    root, model = vit_dir
    teacher = load_teacher(f"vit:{root}")
    assert teacher.modalities == {"image"} and not teacher.joint_space
    assert teacher.image_dim == 32
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8))
    pixels = pickle.loads(pickle.dumps(teacher.image_transform()))(image).unsqueeze(0)
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        direct = model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(teacher.encode_images(pixels), direct, atol=1e-5, rtol=0)
    assert list(teacher.fingerprint()["checkpoint"]) == ["model.safetensors"]


def test_vit_external_checkpoint_with_prefixed_keys(vit_dir, tmp_path):
    from safetensors.torch import save_file

    root, model = vit_dir
    config_only = tmp_path / "cfg"
    config_only.mkdir()
    (config_only / "config.json").write_text((root / "config.json").read_text())
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors"):
        load_teacher(f"vit:{config_only}")
    weights = tmp_path / "classifier.safetensors"
    save_file({f"vit.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    teacher = load_teacher(f"vit:{config_only}", checkpoint=weights)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        direct = model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(teacher.encode_images(pixels), direct, atol=1e-5, rtol=0)


def test_missing_model_dir_names_what_to_provide(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        load_teacher(f"roberta:{tmp_path / 'roberta-base'}")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_teacher(f"hf-text:{minilm_dir}")


def test_minilm_word_features_are_means_by_offsets(minilm, minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    assert minilm.pooling == "mean" and minilm.text_dim == 384
    batch = pickle.loads(pickle.dumps(minilm.text_processor()))([TEXT])
    enc = minilm.encode_tokens(batch)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    raw = tok(TEXT.text, return_offsets_mapping=True, return_tensors="pt")
    offsets = raw.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        hidden = model(**raw).last_hidden_state[0]
    assert torch.equal(batch.input_ids[0], raw["input_ids"][0])
    for i, word in enumerate(TEXT.words):
        rows = [j for j, (s, e) in enumerate(offsets) if e > s and word.start <= s < word.end]
        assert rows, word
        torch.testing.assert_close(enc.word_feat[0][i], hidden[rows].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.eos[0], hidden.mean(0), atol=1e-5, rtol=0)
    assert not enc.truncated.any() and not enc.word_truncated[0].any()


def test_bert_cls_pooling_and_truncation(minilm_dir):
    teacher = load_teacher(f"bert:{minilm_dir}", max_length=8)
    assert teacher.pooling == "cls"
    batch = teacher.text_processor()([TEXT, Text.from_string("a dog")])
    enc = teacher.encode_tokens(batch)
    assert batch.input_ids.shape == (2, 8)
    assert batch.input_ids[0, -1].item() == 102  # [SEP] kept last
    assert enc.truncated.tolist() == [True, False]
    # 6 content tokens fit: "the", "skate", "##boa", "##rder", "'", "s" -> words 0..2 kept
    kept = int((~enc.word_truncated[0]).sum())
    assert enc.word_truncated[0].tolist() == [False] * kept + [True] * (len(TEXT.words) - kept)
    assert 1 <= kept < len(TEXT.words)
    with torch.no_grad():
        hidden = teacher.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state
    torch.testing.assert_close(enc.eos, hidden[:, 0], atol=1e-5, rtol=0)


def test_sentence_encoder_matches_mean_pooling_teacher(minilm, minilm_dir):
    from madcache.teachers.sentence import SentenceEncoder

    emb = SentenceEncoder(minilm_dir).encode([TEXT.text, "a dog"])
    assert emb.shape == (2, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    eos = minilm.encode_tokens(minilm.text_processor()([TEXT])).eos
    torch.testing.assert_close(
        emb[0], torch.nn.functional.normalize(eos, dim=-1)[0], atol=1e-5, rtol=0
    )
