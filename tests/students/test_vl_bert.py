"""The `vl-bert` student beyond the golden numbers: the pretrained file's layout, refused files
and options, frozen stages, and `madcache train --student vl-bert` end to end on the demo
world's VCR (its images, boxes and instance masks) with a tiny random checkpoint in the
released `.model` layout (`{"state_dict": ...}`, `module.` and `vlbert._module.` prefixes, the
RoI head stored twice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from madcache.core.errors import CheckpointCorruptError, ConfigError
from madcache.students import build_student

GOLDEN = Path(__file__).parent / "golden" / "vl_bert_tiny.json"
# a ResNet-50-shaped backbone keeps the suite cheap (same key layout, 6 blocks in layer3)
TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 3,
    "visual_size": 32,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "image_num_layers": 50,
}
SCALES = [48, 80]


def released(state: dict[str, torch.Tensor], *, pretrained: bool) -> dict[str, torch.Tensor]:
    """Our state dict in a released file's key layout: the VCR model's (`ResNetVLBERT` under
    DataParallel) or the pretraining model's (`vl-bert-base-e2e.model`)."""
    out = {}
    for key, value in state.items():
        if key.startswith("mlm_head.") and not pretrained:
            continue
        if pretrained and key.startswith(("final_mlp.", "cnn_loss_reg.2.")):
            continue
        if pretrained and key.startswith("cnn_loss_reg.0."):
            key = "vlbert.mvrc_head.transform." + key[len("cnn_loss_reg.0.") :]
        elif key.startswith("mlm_head."):
            key = "vlbert." + key
        elif key.startswith("vlbert.") and not pretrained:
            key = "vlbert._module." + key[len("vlbert.") :]
        out["module." + key] = value.clone()
    roi = "module.image_feature_extractor.roi_head_feature_extractor."
    out.update(
        {
            "module.image_feature_extractor.head.0." + k[len(roi) :]: v.clone()
            for k, v in out.items()
            if k.startswith(roi)
        }
    )
    if pretrained:
        hidden = TINY["hidden_size"]
        out["module.vlbert.mlm_head.predictions.decoder.weight"] = out[
            "module.vlbert.word_embeddings.weight"
        ].clone()
        out["module.vlbert.mvrc_head.region_cls_pred.weight"] = torch.randn(1601, hidden)
        out["module.vlbert.mvrc_head.region_cls_pred.bias"] = torch.zeros(1601)
        out["module.object_mask_word_embedding.weight"] = torch.randn(1, hidden)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(tokenizer dir, {"vcr": .model, "pretrained": .model}) of one tiny random network."""
    from transformers import BertTokenizer

    base = tmp_path_factory.mktemp("vlbert-files")
    vocab = json.loads(GOLDEN.read_text())["vocab"]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(
        str(base / "bert")
    )
    torch.manual_seed(5)
    model = build_student("vl-bert", model_config=TINY, tokenizer_dir=str(base / "bert"))
    state = model.state_dict()
    paths = {}
    for kind in ("vcr", "pretrained"):
        paths[kind] = base / f"{kind}.model"
        torch.save(
            {
                "state_dict": released(state, pretrained=kind == "pretrained"),
                "optimizer": {"param_groups": [{"lr": 0.1}], "state": {}},
            },
            paths[kind],
        )
    return base / "bert", paths, state


def build(files, kind: str, **options):
    tokenizer, paths, _ = files
    return build_student(
        "vl-bert",
        checkpoint=str(paths[kind]),
        tokenizer_dir=str(tokenizer),
        num_attention_heads=2,
        scales=SCALES,
        **options,
    )


def test_pretrained_file_loads_with_its_heads_and_segment_init(files):
    _, _, state = files
    student = build(files, "pretrained")
    report = student.load_report
    assert "new, random init: cnn_loss_reg.2, final_mlp.1" in report
    assert "not used: object_mask_word_embedding.weight, vlbert.mvrc_head.region_cls_pred" in report
    ours = student.state_dict()
    assert torch.equal(ours["mlm_head.predictions.bias"], state["mlm_head.predictions.bias"])
    assert torch.equal(ours["cnn_loss_reg.0.dense.weight"], state["cnn_loss_reg.0.dense.weight"])
    types = ours["vlbert.token_type_embeddings.weight"]  # PARTIAL_PRETRAIN_SEGMB_INIT
    assert torch.equal(types[1], types[0]) and torch.equal(
        types[2], state["vlbert.token_type_embeddings.weight"][2]
    )


def test_frozen_stages_and_batchnorm_as_vl_berts_cfgs(files):
    student = build(files, "vcr", frozen_stages=[1, 2, 5])
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    backbone = "image_feature_extractor.backbone."
    assert backbone + "conv1.weight" in frozen and backbone + "layer1.0.conv2.weight" in frozen
    assert backbone + "layer2.0.conv2.weight" not in frozen
    assert "image_feature_extractor.roi_head_feature_extractor.0.conv1.weight" in frozen
    assert backbone + "layer3.0.bn1.weight" in frozen  # IMAGE_FROZEN_BN
    student.train()
    assert not student.image_feature_extractor.backbone.layer3[0].bn1.training
    assert student.vlbert.training


def test_saved_student_reloads_without_the_model_file(files, tmp_path):
    from madcache.students import load_student, save_student

    student = build(files, "vcr", frozen_stages=[1])
    save_student(student, tmp_path / "saved")
    again = load_student(tmp_path / "saved")
    assert again.config.checkpoint is None and again.config.scales == SCALES
    assert again.model_config == student.model_config
    ours, theirs = student.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert again.image_feature_extractor.backbone.layer1[0].conv1.weight.requires_grad


def test_a_file_of_another_model_is_one_line_naming_the_keys(files, tmp_path):
    _, paths, _ = files
    state = torch.load(paths["vcr"], weights_only=True)["state_dict"]
    state["module.vlbert._module.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "odd.model")
    with pytest.raises(CheckpointCorruptError, match=r"odd\.model .*unexpected vlbert\.extra"):
        build_student(
            "vl-bert",
            checkpoint=str(tmp_path / "odd.model"),
            tokenizer_dir=str(files[0]),
            num_attention_heads=2,
        )
    prec = {k: v for k, v in state.items() if ".backbone." not in k and ".extra." not in k}
    torch.save({"state_dict": prec}, tmp_path / "vl-bert-base-prec.model")
    with pytest.raises(CheckpointCorruptError, match=r"prec\.model does not fit .*no ResNet"):
        build_student(
            "vl-bert",
            checkpoint=str(tmp_path / "vl-bert-base-prec.model"),
            tokenizer_dir=str(files[0]),
            num_attention_heads=2,
        )
    with pytest.raises(ConfigError, match="frozen_stages are 1-5"):
        build(files, "vcr", frozen_stages=[6])


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_root, vcr_training_inputs, files):
    pytest.importorskip("skimage", reason="scikit-image (madcache[vlbert]) is not installed")
    base = tmp_path_factory.mktemp("vlbert-demo")
    vcr_training_inputs(base, demo_root / "vcr")
    return base, demo_root / "vcr"


def student_options(files) -> dict[str, object]:
    tokenizer, paths, _ = files
    return {
        "checkpoint": str(paths["vcr"]),
        "tokenizer_dir": str(tokenizer),
        "num_attention_heads": 2,
        "scales": SCALES,
    }


@pytest.mark.slow
def test_train_vl_bert_baseline(world, files):
    """The task stage alone, a few steps (no validation): finite losses, a saved student."""
    from madcache.train import loop as train_mod
    from madcache.train.config import TrainConfig

    base, root = world
    metrics = train_mod.run_training(
        TrainConfig(
            dataset="vcr",
            root=str(root),
            out=str(base / "runs" / "baseline"),
            student="vl-bert",
            split_file=str(base / "split.json"),
            method="baseline",
            max_steps=3,
            batch_size=2,
            lr=1e-3,
            eval_split=None,
            student_options=student_options(files),
        )
    )
    assert metrics["student"] == "vl-bert" and metrics["status"] == "complete"
    losses = [h["loss"] for h in metrics["history"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert (base / "runs" / "baseline" / "student" / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_cli_vl_bert_mad(world, files):
    """`madcache train --student vl-bert --method mad` (no --regions: it reads the images and
    the dataset's boxes), its AF stage on VL-BERT's label-free losses, then val."""
    from click.testing import CliRunner

    from madcache.cli import cli

    base, root = world
    run = base / "runs" / "mad"
    args = [
        "train",
        "--student",
        "vl-bert",
        "--method",
        "mad",
        "--dataset",
        "vcr",
        "--root",
        str(root),
        "--cache",
        str(base / "cache"),
        "--split-file",
        str(base / "split.json"),
        "--max-steps",
        "1",
        "--af-max-steps",
        "1",
        "--batch-size",
        "2",
        "--out",
        str(run),
    ]
    args += [f"--student-option={k}={v}" for k, v in student_options(files).items()]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student"] == "vl-bert" and metrics["status"] == "complete"
    assert set(metrics["eval"]["val"]) == {"q2a", "qa2r", "q2ar"}
    af = [h for h in metrics["history"] if h.get("stage") == "af"]
    assert af and {"mlm", "cnn_reg"} <= set(af[0]["parts"]), af
    assert all(torch.isfinite(torch.tensor(v)) for v in af[0]["parts"].values())
    saved = json.loads((run / "student" / "student.json").read_text())
    assert saved["student"] == "vl-bert" and saved["options"]["checkpoint"] is None
