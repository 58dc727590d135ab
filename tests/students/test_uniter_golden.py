"""The `uniter` port against numbers computed by UNITER's own model code (ChenRocks/UNITER,
tests/students/golden/README.md): random checkpoints in the released key layouts, saved as `.pt`
state dicts, loaded through madcache and fed the same inputs."""

from __future__ import annotations

import pytest
import torch

from madcache.students import build_student
from madcache.students.base import RegionInputs
from madcache.students.uniter_vcr import pad

TOL = 1e-5


def text_and_regions(golden, tag_free: bool = False, types: bool = True):
    inp = golden["inputs"]
    rows = []
    for ids, kinds in zip(inp["input_ids"], inp["txt_type_ids"]):
        ids = torch.tensor(ids)
        if tag_free:
            ids = torch.where(ids >= golden["config"]["vocab_size"], 50, ids)
        kinds = torch.tensor(kinds) if types else torch.zeros(len(ids), dtype=torch.long)
        rows.append(
            (ids.numpy(), kinds.numpy(), -torch.ones(len(ids), 2, dtype=torch.long).numpy())
        )
    text = {k: torch.from_numpy(v) for k, v in pad(rows, 0).items()}
    counts = [len(f) for f in inp["img_feat"]]
    feat = torch.zeros(len(counts), max(counts), golden["img_dim"])
    boxes = torch.zeros(len(counts), max(counts), 4)
    mask = torch.zeros(len(counts), max(counts), dtype=torch.bool)
    for i, n in enumerate(counts):
        feat[i, :n], boxes[i, :n], mask[i, :n] = (
            torch.tensor(inp["img_feat"][i]),
            torch.tensor(inp["img_boxes"][i]),
            True,
        )
    return text, RegionInputs(feat, boxes, mask), torch.tensor(inp["image"])


def build(path, tokenizer, **options):
    torch.manual_seed(0)
    return build_student(
        "uniter",
        checkpoint=str(path),
        tokenizer_dir=str(tokenizer),
        config_json=str(path.parent / "uniter-tiny.json"),
        region_dim=12,
        **options,
    ).eval()


def close(actual, expected) -> float:
    diff = (actual - torch.tensor(expected)).abs().max().item()
    assert diff < TOL, diff
    return diff


def test_vcr_checkpoint_gives_uniters_pooled_output_and_rank_scores(uniter_golden, uniter_files):
    tokenizer, paths = uniter_files
    case = uniter_golden["cases"]["vcr"]
    student = build(paths["vcr"], tokenizer)
    text, regions, rows = text_and_regions(uniter_golden)
    with torch.no_grad():
        hidden = student.encode(text, regions, rows)
        pooled = student.uniter.pooler(hidden)
        out = student({**text, "num_choices": 4, "regions": regions})
    close(pooled, case["pooled"])
    close(student.vcr_output(pooled).detach(), case["vcr_logits"])
    close(out.logits.reshape(-1), case["rank_scores"])  # rank score = logit 1
    close(out.image_token.reshape(8, -1), case["first_region"])  # V_s = the first region
    assert "new, random init" in student.load_report and "vcr_output" not in student.load_report


def test_second_stage_checkpoint_keeps_its_pretraining_heads(uniter_golden, uniter_files):
    tokenizer, paths = uniter_files
    case = uniter_golden["cases"]["vcr_2nd_stage"]
    student = build(paths["vcr_2nd_stage"], tokenizer)
    text, regions, rows = text_and_regions(uniter_golden)
    with torch.no_grad():
        hidden = student.encode(text, regions, rows)
        pooled = student.uniter.pooler(hidden)
        close(pooled, case["pooled"])
        close(student.cls.predictions(hidden[:, 1]), case["mlm_scores_token1"])
        close(student.itm_output(pooled), case["itm_scores"])
    assert "vcr_output" in student.load_report and "region_classifier" in student.load_report


def test_first_stage_checkpoint_with_gamma_beta_names_is_extended_for_vcr(
    uniter_golden, uniter_files
):
    tokenizer, paths = uniter_files
    case = uniter_golden["cases"]["pretrained_gamma_beta"]
    assert any(k.endswith("LayerNorm.gamma") for k in case["keys"])
    student = build(paths["pretrained_gamma_beta"], tokenizer)
    assert student.uniter.embeddings.token_type_embeddings.weight.shape[0] == 4
    assert student.uniter.embeddings.word_embeddings.weight.shape[0] == 100 + 81
    text, regions, rows = text_and_regions(uniter_golden, tag_free=True)
    with torch.no_grad():
        close(student.uniter.pooler(student.encode(text, regions, rows)), case["pooled"])


def test_vqa_head_as_model_vqa(uniter_golden, uniter_files):
    tokenizer, paths = uniter_files
    case = uniter_golden["cases"]["vqa"]
    student = build(
        paths["vqa"],
        tokenizer,
        task="multilabel",
        answers=[f"a{i}" for i in range(uniter_golden["num_answers"])],
    )
    text, regions, rows = text_and_regions(uniter_golden, tag_free=True, types=False)
    with torch.no_grad():
        scores = student.vqa_output(student.uniter.pooler(student.encode(text, regions, rows)))
    close(scores, case["scores"])


@pytest.mark.parametrize("case", ["vcr", "vcr_2nd_stage", "pretrained_gamma_beta", "vqa"])
def test_max_abs_difference(case, uniter_golden, uniter_files, capsys):
    """Prints the largest difference of each case's pooled output (for the report)."""
    tokenizer, paths = uniter_files
    options = {"task": "multilabel", "answers": ["a"] * 7} if case == "vqa" else {}
    student = build(paths[case], tokenizer, **options)
    text, regions, rows = text_and_regions(
        uniter_golden, tag_free=case in ("vqa", "pretrained_gamma_beta"), types=case != "vqa"
    )
    with torch.no_grad():
        pooled = student.uniter.pooler(student.encode(text, regions, rows))
    expected = uniter_golden["cases"][case].get("pooled")
    if expected is not None:
        with capsys.disabled():
            print(f"\n{case}: max |pooled - golden| = {close(pooled, expected):.2e}")
