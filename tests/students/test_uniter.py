"""The `uniter` student: UNITER's VCR input (token types, object tags, spans), its checkpoint
errors, the AF losses and saving (tests/students/test_uniter_golden.py: outputs against UNITER's
own code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from madcache.core.errors import CheckpointCorruptError, CheckpointNotFoundError, ConfigError
from madcache.data.vcr import record_examples
from madcache.students import build_student, load_student, save_student
from madcache.students.uniter_model import convert_state_dict

RECORD = {
    "annot_id": "val-1",
    "objects": ["person", "person", "bag"],
    "img_fn": "a/1.jpg",
    "metadata_fn": "a/1.json",
    "question": ["What", "is", [0], "holding", "?"],
    "answer_choices": [["the", "man", "."], [[0, 1], "is", "."], ["a", [2], "."], ["nothing", "."]],
    "rationale_choices": [
        ["because", [1], "."],
        ["he", "is", "."],
        ["she", "is", "."],
        ["why", "."],
    ],
    "answer_label": 2,
    "rationale_label": 0,
}


@pytest.fixture(scope="module")
def vcr_examples():
    return record_examples(RECORD, split="val", file="x", line=1, root=Path("/tmp"))


@pytest.fixture(scope="module")
def student(uniter_files):
    tokenizer, paths = uniter_files
    torch.manual_seed(0)
    return build_student(
        "uniter",
        checkpoint=str(paths["vcr_2nd_stage"]),
        tokenizer_dir=str(tokenizer),
        config_json=str(paths["config_json"]),
        region_dim=12,
    ).eval()


def decoded(student, ids):
    base = len(student.tokenizer)
    return [
        f"<tag{i - base}>" if i >= base else student.tokenizer.convert_ids_to_tokens(int(i))
        for i in ids
    ]


def test_vcr_input_as_uniters_data_vcr(student, vcr_examples):
    qa, qar = vcr_examples
    item = student.tokenise([qa])[0]
    # [CLS] question [SEP] answer [SEP]: question 0, the [SEP] after it and the answer 2
    assert decoded(student, item.ids[2]) == [
        "[CLS]",
        "[UNK]",
        "is",
        "<tag0>",
        "holding",
        "?",
        "[SEP]",
        "a",
        "<tag2>",
        ".",
        "[SEP]",
    ]  # cased
    assert item.types[2].tolist() == [0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2]
    # "person1 and person2" (answer 1): two tags and the word "and"
    assert decoded(student, item.ids[1])[7:10] == ["<tag0>", "and", "<tag1>"]
    # [CLS] question [SEP] answer [SEP] rationale [SEP]: 0 .. 2 .. 3
    item = student.tokenise([qar])[0]
    assert item.types[0].tolist() == [0] * 6 + [2] * 4 + [3] * 5
    assert decoded(student, item.ids[0])[-4:] == ["because", "<tag1>", ".", "[SEP]"]


def test_spans_are_honest_character_offsets(student, vcr_examples):
    for example in vcr_examples:
        item = student.tokenise([example])[0]
        for c, text in enumerate(example.texts):
            base = len(student.tokenizer)
            for token, (start, end) in zip(item.ids[c], item.spans[c]):
                if start < 0:
                    assert student.tokenizer.convert_ids_to_tokens(int(token)) in ("[CLS]", "[SEP]")
                elif token >= base:  # an object tag spans its rendered word, "person1"
                    assert text.text[start:end] in ("person1", "person2", "bag3")
                else:
                    piece = student.tokenizer.convert_ids_to_tokens(int(token))
                    assert piece == "[UNK]" or text.text[start:end] == piece.removeprefix("##")


def test_prepare_equals_collate_of_tokenise_and_pads(student, vcr_examples, make):
    regions = make.regions((3, 2), dim=12)
    examples = [vcr_examples[0], vcr_examples[0]]
    inputs = student.prepare(examples, regions)
    again = student.collate(student.tokenise(examples), regions)
    for key in ("input_ids", "token_types", "attention_mask", "token_spans"):
        assert torch.equal(inputs[key], again[key])
    out = student(inputs)
    assert out.logits.shape == (2, 4) and out.image_token.shape == (2, 4, 32)
    assert (
        out.text_tokens.shape[:3]
        == out.token_spans.shape[:3]
        == (2, 4, inputs["input_ids"].shape[1])
    )


def test_af_losses_mlm_itm_mrfr(student, vcr_examples, make):
    regions = make.regions((3, 2), dim=12)
    examples = [vcr_examples[0], vcr_examples[0]]
    student.train()
    try:
        inputs = student.prepare(examples, regions)
        losses = student.pretrain_losses(inputs, examples, torch.Generator().manual_seed(0))
        again = student.pretrain_losses(inputs, examples, torch.Generator().manual_seed(0))
    finally:
        student.eval()
    assert set(losses) == {"mlm", "itm", "mrfr"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert student.feat_regress.net[0].weight.grad is not None
    student.zero_grad()
    assert set(again) == set(losses)


def test_no_label_free_text_means_no_itm(student, make):
    regions = make.regions((2,), dim=12)
    examples = [make.single(0)]
    s = build_student(
        "uniter",
        model_config=student.model_config,
        tokenizer_dir=student.config.tokenizer_dir,
        task="classification",
    )
    losses = s.pretrain_losses(
        s.prepare(examples, regions), examples, torch.Generator().manual_seed(0)
    )
    assert losses["itm"].item() == 0.0 and losses["mrfr"].item() == 0.0


def test_save_and_load_give_the_same_logits(student, vcr_examples, make, tmp_path):
    regions = make.regions((3,), dim=12)
    save_student(student, tmp_path / "s")
    again = load_student(tmp_path / "s").eval()
    with torch.no_grad():
        a = student(student.prepare(vcr_examples[:1], regions)).logits
        b = again(again.prepare(vcr_examples[:1], regions)).logits
    assert torch.equal(a, b)


def test_checkpoint_errors_are_one_line(uniter_files, tmp_path):
    tokenizer, paths = uniter_files
    state = torch.load(paths["vcr"], weights_only=True)
    state.pop("uniter.encoder.layer.1.output.dense.weight")
    state["uniter.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointCorruptError) as info:
        build_student("uniter", checkpoint=str(tmp_path / "bad.pt"), tokenizer_dir=str(tokenizer))
    message = str(info.value)
    assert "\n" not in message and "bad.pt" in message
    assert "missing uniter.encoder.layer.1.output.dense.weight" in message
    assert "unexpected uniter.extra.weight" in message
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointCorruptError, match="junk.pt"):
        build_student("uniter", checkpoint=str(tmp_path / "junk.pt"), tokenizer_dir=str(tokenizer))
    with pytest.raises(CheckpointNotFoundError, match="nowhere.json"):
        build_student(
            "uniter",
            checkpoint=str(paths["vcr"]),
            tokenizer_dir=str(tokenizer),
            config_json=str(tmp_path / "nowhere.json"),
        )
    with pytest.raises(ConfigError, match="tokenizer_dir"):
        build_student("uniter", checkpoint=str(paths["vcr"]))
    with pytest.raises(ConfigError, match="checkpoint=FILE"):
        build_student("uniter", tokenizer_dir=str(tokenizer))
    with pytest.raises(ConfigError, match="region store's features have 199"):
        build_student(
            "uniter", checkpoint=str(paths["vcr"]), tokenizer_dir=str(tokenizer), region_dim=199
        )


def test_conversion_is_pure_and_extends_a_first_stage_checkpoint():
    released = {
        "bert.embeddings.word_embeddings.weight": torch.ones(5, 4),
        "bert.embeddings.token_type_embeddings.weight": torch.arange(8.0).view(2, 4),
        "bert.embeddings.LayerNorm.gamma": torch.ones(4),
        "cls.predictions.bias": torch.ones(5),
        "cls.predictions.decoder.weight": torch.ones(5, 4),
    }
    a = convert_state_dict(released, vcr=True, generator=torch.Generator().manual_seed(0))
    b = convert_state_dict(released, vcr=True, generator=torch.Generator().manual_seed(0))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "uniter.embeddings.LayerNorm.weight" in a and "cls.predictions.decoder.weight" not in a
    types = a["uniter.embeddings.token_type_embeddings.weight"]
    assert torch.equal(types[2], types[0]) and torch.equal(types[3], types[0])
    assert a["uniter.embeddings.word_embeddings.weight"].shape == (5 + 81, 4)
    assert a["cls.predictions.bias"].shape == (86,) and a["cls.predictions.bias"][5:].eq(0).all()
    assert released["bert.embeddings.word_embeddings.weight"].shape == (5, 4)  # untouched
    plain = convert_state_dict(released, vcr=False, generator=torch.Generator())
    assert plain["uniter.embeddings.token_type_embeddings.weight"].shape == (2, 4)


def test_single_text_tasks_are_cls_text_sep_of_type_0(student, make):
    s = build_student(
        "uniter",
        model_config=student.model_config,
        tokenizer_dir=student.config.tokenizer_dir,
        task="classification",
    )
    item = s.tokenise([make.single(0, "the man is holding a red square .")])[0]
    assert decoded(s, item.ids[0]) == [
        "[CLS]",
        "the",
        "man",
        "is",
        "holding",
        "a",
        "red",
        "square",
        ".",
        "[SEP]",
    ]
    assert item.types[0].tolist() == [0] * 10
    assert item.spans[0][1].tolist() == [0, 3] and item.spans[0][0].tolist() == [-1, -1]
