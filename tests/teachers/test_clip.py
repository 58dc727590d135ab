from __future__ import annotations

import hashlib
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from madcache.core.errors import CheckpointNotFoundError, UnknownNameError
from madcache.data.records import Text
from madcache.teachers import Teacher, load_teacher

TEXTS = [
    Text.from_string("a red car parked near the old house"),
    Text.from_string("person1 is holding an umbrella, isn't she?"),
]


@pytest.fixture(scope="module")
def teacher(tiny_clip):
    config, checkpoint, _ = tiny_clip
    return load_teacher(f"openclip-config:{config}", checkpoint=checkpoint)


def test_protocol_and_dims(teacher):
    assert isinstance(teacher, Teacher)
    assert teacher.joint_space and teacher.modalities == {"image", "text"}
    assert teacher.image_dim == teacher.text_dim == 16


def test_loaded_weights_equal_the_saved_model(teacher, tiny_clip):
    saved = tiny_clip[2].state_dict()
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_eos_equals_encode_text_on_the_same_ids(teacher, tiny_clip):
    batch = teacher.text_processor()(TEXTS)
    enc = teacher.encode_tokens(batch)
    with torch.no_grad():
        direct = tiny_clip[2].encode_text(batch.input_ids)
    assert enc.eos.shape == (2, 16)
    torch.testing.assert_close(enc.eos, direct, atol=1e-5, rtol=0)


def test_word_by_word_ids_match_open_clip_tokenizer(teacher):
    import open_clip

    batch = teacher.text_processor()(TEXTS[:1])
    whole = open_clip.tokenize([TEXTS[0].text], context_length=16)
    assert torch.equal(batch.input_ids, whole)
    assert batch.token_word[0, :10].tolist() == [-1, 0, 1, 2, 3, 4, 5, 6, 7, -1]
    assert batch.attention_mask[0].sum().item() == 10


def test_word_features_are_means_of_projected_sub_tokens(teacher):
    batch = teacher.text_processor()(TEXTS[1:])
    enc = teacher.encode_tokens(batch)
    with torch.no_grad():
        tokens = teacher.token_features(batch.input_ids) @ teacher.model.text_projection
    words = TEXTS[1].words
    assert enc.word_feat[0].shape == (len(words), 16)
    owner = batch.token_word[0]
    for i in range(len(words)):
        expected = tokens[0, owner == i].mean(0)
        torch.testing.assert_close(enc.word_feat[0][i], expected, atol=1e-5, rtol=0)
    # "person1" -> "person", "1" and "isn't" -> "isn", "'t": two BPE tokens each
    assert (owner == 0).sum().item() == 2 and (owner == 6).sum().item() == 2


def test_truncation_flags_texts_and_words(teacher):
    long = Text.from_string(" ".join(f"w{i}" for i in range(10)))  # "w3" -> 2 tokens each
    batch = teacher.text_processor()([long, TEXTS[0]])
    enc = teacher.encode_tokens(batch)
    assert enc.truncated.tolist() == [True, False]
    assert batch.input_ids[0, -1].item() == 49407  # EOT kept last, as open_clip truncates
    # 14 content tokens fit: words 0..6 whole, word 7 and later lost
    assert enc.word_truncated[0].tolist() == [False] * 7 + [True] * 3
    assert not enc.word_truncated[1].any()
    assert torch.equal(enc.word_feat[0][7:], torch.zeros(3, 16))


def test_image_embedding_equals_encode_image(teacher, tiny_clip):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    pixels = teacher.image_transform()(image).unsqueeze(0)
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        direct = tiny_clip[2].encode_image(pixels)
    torch.testing.assert_close(teacher.encode_images(pixels), direct, atol=1e-5, rtol=0)


def test_worker_callables_pickle(teacher):
    processor = pickle.loads(pickle.dumps(teacher.text_processor()))
    assert torch.equal(processor(TEXTS).input_ids, teacher.text_processor()(TEXTS).input_ids)
    pickle.dumps(teacher.image_transform())


def test_fingerprint_names_checkpoint_digest_and_preprocessing(teacher, tiny_clip):
    fp = teacher.fingerprint()
    assert fp["checkpoint"]["sha256"] == hashlib.sha256(tiny_clip[1].read_bytes()).hexdigest()
    assert fp["context_length"] == 16 and fp["config"]["embed_dim"] == 16
    assert fp["preprocess"]["size"] == [32, 32]
    assert "SimpleTokenizer" in fp["tokenizer"]["kind"]


def test_madcache_demo_loads_a_checkpoint_by_the_same_path(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    load_teacher("madcache-demo", random_init=True)  # registers the shipped config
    torch.manual_seed(3)
    model = open_clip.create_model("madcache-demo").eval()
    path = tmp_path / "demo.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    teacher = load_teacher("madcache-demo", checkpoint=path)
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            teacher.encode_images(pixels), model.encode_image(pixels), atol=1e-5, rtol=0
        )
    assert teacher.context_length == 64 and teacher.image_dim == 128


def test_missing_weights_fail_at_once_naming_the_file(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import open_clip  # noqa: F401  (import time is not what is measured)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError) as info:
        load_teacher("clip-vit-b16")
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert "ViT-B-16.safetensors" in message and "--checkpoint" in message
    assert "open_clip_pytorch_model.bin" in message
    with pytest.raises(CheckpointNotFoundError, match="madcache demo teacher"):
        load_teacher("madcache-demo")
    with pytest.raises(CheckpointNotFoundError, match="nope.safetensors"):
        load_teacher("openclip:ViT-B-32", checkpoint=tmp_path / "nope.safetensors")


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        load_teacher("clip-vit-b99")
    assert "clip-vit-b16" in str(info.value) and "openclip:<model>" in str(info.value)
    with pytest.raises(UnknownNameError, match="roberta:<dir>"):
        load_teacher("nosuch:thing")


def test_trimmed_text_encoding_equals_encode_text(teacher, tiny_clip):
    from madcache.teachers.clip import encode_text_trimmed, trim_padding

    ids = teacher.text_processor()(TEXTS).input_ids
    assert trim_padding(ids).shape == (2, 13)  # SOT + 11 tokens + EOT of the longer text
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text_trimmed(tiny_clip[2], ids), tiny_clip[2].encode_text(ids), atol=1e-5, rtol=0
        )
