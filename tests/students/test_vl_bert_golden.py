"""`vl-bert` against numbers computed by VL-BERT's own code (tests/students/golden/README.md):
random checkpoints in the released `.model` layout, rebuilt here by the same rule, loaded through
`build_student`, run on the same VCR record, image and boxes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="scikit-image (madcache[vlbert]) is not installed")
GOLDEN = Path(__file__).parent / "golden" / "vl_bert_tiny.json"
TOLERANCE = 1e-4


def vl_bert_value(
    key: str, shape, index: int, seed: int, scale: float, gain: float = 0.5
) -> torch.Tensor:
    """The golden rule: tensor `index` of the sorted keys from seed + index; matrices, convs and
    embeddings randn * gain / sqrt(fan-in), BatchNorm running variances 1 + |randn| * scale,
    norm weights 1 + randn * scale, everything else randn * scale."""
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked":
        return torch.tensor(0, dtype=torch.long)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + index))
    if len(shape) >= 2:
        return x * gain / math.sqrt(x[0].numel())
    if last == "running_var":
        return 1.0 + x.abs() * scale
    norm = last == "weight" and any(
        p in key for p in ("LayerNorm", "visual_ln", ".bn", "downsample.1")
    )
    return x * scale + 1.0 if norm else x * scale


def vl_bert_checkpoint(case: dict, scale: float) -> dict[str, torch.Tensor]:
    items = [(k, s) for k, s in sorted(case["keys"].items()) if k not in case["ties"]]
    state = {k: vl_bert_value(k, s, i, case["seed"], scale) for i, (k, s) in enumerate(items)}
    return {**state, **{k: state[src].clone() for k, src in case["ties"].items()}}


def write_image(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory, golden):
    """(root, tokenizer dir, {case: (.model path, Example)}) on disk."""
    from transformers import BertTokenizer

    from madcache.data.vcr import record_examples

    root = tmp_path_factory.mktemp("vlbert")
    vocab = golden["vocab"]
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(
        str(root / "bert")
    )
    (root / "vcr1images").mkdir()
    record = dict(golden["record"])
    meta = {
        "boxes": record.pop("boxes"),
        "segms": record.pop("segms"),
        "names": record["objects"],
        "width": 40,
        "height": 30,
    }
    (root / "vcr1images" / "meta.json").write_text(json.dumps(meta))
    cases = {}
    for name, mode in (("Q2A", 0), ("QA2R", 1)):
        case = golden["cases"][name]
        write_image(root / "vcr1images" / f"{name}.png", case["image_seed"])
        model = root / f"{name}.model"
        torch.save({"state_dict": vl_bert_checkpoint(case, golden["scale"])}, model)
        rec = {
            **record,
            "annot_id": f"val-{name}",
            "img_fn": f"{name}.png",
            "metadata_fn": "meta.json",
        }
        example = record_examples(rec, split="val", file="golden", line=1, root=root)[mode]
        cases[name] = (model, example)
    return root, root / "bert", cases


@pytest.fixture(scope="module", params=["Q2A", "QA2R"])
def case(request, golden, world):
    from madcache.students import build_student

    root, tokenizer, cases = world
    model, example = cases[request.param]
    student = build_student(
        "vl-bert",
        checkpoint=str(model),
        tokenizer_dir=str(tokenizer),
        num_attention_heads=golden["vlbert"]["num_attention_heads"],
        scales=golden["scales"],
    ).eval()
    images = student.pixel_loader(root)([example])
    return golden["cases"][request.param], student, example, images


def close(ours: torch.Tensor, theirs) -> float:
    """Largest absolute difference, checked below TOLERANCE."""
    theirs = torch.tensor(theirs, dtype=torch.float32)
    assert ours.shape == theirs.shape
    diff = (ours.float() - theirs).abs().max().item()
    assert diff < TOLERANCE, diff
    return diff


def test_text_input_is_vl_berts(case):
    """Token ids, tags and types as VL-BERT's dataset + prepare_text_from_qa build them."""
    gold, student, example, _ = case
    tokens = student.tokenise([example])[0]
    cls_id, sep_id = student.tokenizer.cls_token_id, student.tokenizer.sep_token_id
    question = [(i, t) for i, t, _ in gold["question"]]
    for c, choice in enumerate(gold["choices"]):
        expected = [
            (cls_id, 0),
            *question,
            (sep_id, 0),
            *[(i, t) for i, t, _ in choice],
            (sep_id, 0),
        ]
        assert list(zip(tokens.ids[c].tolist(), tokens.tags[c].tolist())) == expected
        types = [0] * (len(question) + 2) + [1] * (len(choice) + 1)
        assert tokens.types[c].tolist() == types


def test_boxes_masks_and_size_are_vl_berts(case):
    gold, _, _, images = case
    close(images.boxes[0], [b[:4] for b in gold["boxes"]])
    assert torch.equal(images.masks[0], torch.tensor(gold["masks"]))
    close(images.size[0], gold["im_info"][:2])
    assert list(images.pixels.shape[1:]) == gold["image_shape"]
    assert images.classes[0].tolist() == [int(b[5]) for b in gold["boxes"]]


def test_outputs_match_vl_bert(case):
    gold, student, example, images = case
    with torch.no_grad():
        inputs = student.prepare([example], images)
        out = student(inputs)
        obj = student.objects(inputs["images"])
        hidden = student.encode(inputs, obj, torch.zeros(4, dtype=torch.long))
        length = inputs["input_ids"].shape[1]
        pooled = student.vlbert.pooler(hidden)
        reg = student.cnn_loss_reg(hidden[:, length])
    close(out.logits[0], gold["logits"])
    close(obj[0], gold["obj_reps"])
    close(pooled, gold["pooled"])
    close(hidden[:, 1], gold["text_first"])
    close(out.image_token[0], gold["object_hidden"])
    close(reg[:, :5], gold["cnn_reg"])


def test_load_report_names_the_heads_the_file_lacks(case):
    """A VCR file lacks the pretrained MLM head: it starts random and the report says so."""
    report = case[1].load_report
    assert "new, random init: mlm_head.predictions, mlm_head.predictions.transform." in report
    assert "final_mlp" not in report and "cnn_loss_reg" not in report
