"""End to end: `madcache train --student uniter --method mad` on the demo world's VCR, with a
tiny random UNITER checkpoint in the released key layout (`.pt`), the demo's boxcrop region
store and a teacher cache; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from madcache.students import build_student
from madcache.students.uniter_model import TIED
from madcache.train import loop as train_mod
from madcache.train.config import TrainConfig

TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "img_dim": 199,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_root, uniter_files, vcr_training_inputs):
    """The demo world's VCR, a cache of its training split (a tiny CLIP), boxcrop region stores
    (199-d) for train and val, a low-shot split, and a first-stage UNITER checkpoint (`.pt`,
    released key names, tied keys stored twice) with its config JSON."""
    base = tmp_path_factory.mktemp("uniter-demo")
    root = demo_root / "vcr"
    vcr_training_inputs(base, root)
    tokenizer, _ = uniter_files
    torch.manual_seed(3)
    model = build_student(
        "uniter", model_config=TINY, tokenizer_dir=str(tokenizer), task="classification"
    )
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vqa_output.")}
    state.update({k: state[src].clone() for k, src in TIED.items()})
    torch.save(state, base / "uniter-tiny.pt")
    (base / "uniter-tiny.json").write_text(
        json.dumps({k: v for k, v in TINY.items() if k != "img_dim"})
    )
    return base, root, tokenizer


def options(world) -> dict[str, str]:
    base, _, tokenizer = world
    return {
        "checkpoint": str(base / "uniter-tiny.pt"),
        "tokenizer_dir": str(tokenizer),
        "config_json": str(base / "uniter-tiny.json"),
    }


def config(world, name, **overrides) -> TrainConfig:
    base, root, _ = world
    values = dict(
        dataset="vcr",
        root=str(root),
        out=str(base / "runs" / name),
        student="uniter",
        cache=str(base / "cache"),
        regions=str(base / "regions-train"),
        eval_regions=str(base / "regions-val"),
        split_file=str(base / "split.json"),
        method="mad",
        max_steps=2,
        af_max_steps=1,
        batch_size=4,
        lr=1e-3,
        student_options=options(world),
    )
    return TrainConfig(**{**values, **overrides})


@pytest.mark.slow
def test_train_cli_uniter_mad(world):
    from click.testing import CliRunner

    from madcache.cli import cli
    from madcache.evaluation.evaluate import evaluate_run

    base, root, _ = world
    run = base / "runs" / "cli"
    args = [
        "train",
        "--student",
        "uniter",
        "--method",
        "mad",
        "--dataset",
        "vcr",
        "--root",
        str(root),
        "--cache",
        str(base / "cache"),
        "--regions",
        str(base / "regions-train"),
        "--eval-regions",
        str(base / "regions-val"),
        "--split-file",
        str(base / "split.json"),
        "--max-steps",
        "2",
        "--af-max-steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(run),
    ]
    args += [f"--student-option={k}={v}" for k, v in options(world).items()]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student"] == "uniter" and metrics["status"] == "complete"
    assert set(metrics["eval"]["val"]) == {"q2a", "qa2r", "q2ar"}
    af = [h for h in metrics["history"] if h.get("stage") == "af"]
    assert af and {"mlm", "itm", "mrfr"} <= set(af[0]["parts"]), af
    saved = json.loads((run / "student" / "student.json").read_text())
    assert saved["student"] == "uniter" and saved["options"]["checkpoint"] is None
    assert evaluate_run(run, split="val") == metrics["eval"]["val"]


@pytest.mark.slow
def test_train_cli_reports_a_bad_checkpoint_in_one_line(world, tmp_path):
    from click.testing import CliRunner

    from madcache.cli import cli

    base, root, tokenizer = world
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--student",
            "uniter",
            "--method",
            "baseline",
            "--dataset",
            "vcr",
            "--root",
            str(root),
            "--regions",
            str(base / "regions-train"),
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
            f"--student-option=checkpoint={tmp_path / 'junk.pt'}",
            f"--student-option=tokenizer_dir={tokenizer}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "junk.pt" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_uniter_resume_equals_uninterrupted(world, cut_and_resume, tensors_equal):
    base = world[0]
    settings = dict(max_steps=4, checkpoint_every=2, eval_split=None)
    full, resumed = cut_and_resume(
        lambda name, **extra: config(world, name, **settings, **extra), at=4
    )
    assert resumed["history"] == full["history"]
    assert tensors_equal(
        *(base / "runs" / n / "student" / "model.safetensors" for n in ("full", "cut"))
    )


@pytest.mark.slow
def test_uniter_mad_trains_on_features_imported_from_uniters_img_db(world, tmp_path):
    """End to end on UNITER's own region format (issue 27): LMDB img_dbs in the released layout
    (VCR's pair: vcr_gt_SPLIT + vcr_SPLIT, msgpack values, 199-d features) imported with
    `uniter-imgdb`, then `--student uniter --method mad` trains on them."""
    from madcache.students.regions import build_region_store, open_regions

    spec = importlib.util.spec_from_file_location(
        "region_formats_tests", str(Path(__file__).with_name("test_region_formats.py"))
    )
    formats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(formats)
    _, root, _ = world
    stores = {}
    for split in ("train", "val"):
        dbs = tmp_path / f"db-{split}"
        formats.vcr_sources(dbs, root, split, dim=TINY["img_dim"])
        stores[split] = tmp_path / f"regions-{split}"
        build_region_store(
            dataset="vcr",
            root=root,
            split=split,
            extractor="uniter-imgdb",
            extractor_options={"img_db": f"{dbs}/vcr_gt_{split};{dbs}/vcr_{split}", "min_bb": 1},
            out=stores[split],
            max_regions=8,
            progress=False,
        )
    assert open_regions(stores["train"]).feature_dim == TINY["img_dim"]
    metrics = train_mod.run_training(
        config(world, "img-db", regions=str(stores["train"]), eval_regions=str(stores["val"]))
    )
    assert metrics["status"] == "complete" and set(metrics["eval"]["val"]) == {
        "q2a",
        "qa2r",
        "q2ar",
    }
    assert {"mlm", "itm", "mrfr"} <= set(
        next(h for h in metrics["history"] if h["stage"] == "af")["parts"]
    )
