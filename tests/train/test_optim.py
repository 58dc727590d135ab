"""Optimizers and schedules (train/optim.py): the rates of both published schedules against
numbers worked out by hand from the originals' formulas, the parameter groups, SGD resumed ==
uninterrupted, and a changed optimizer refused on --resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from madcache.cli import cli
from madcache.core.errors import ConfigError
from madcache.train import loop as loop_mod
from madcache.train.config import OPTIMIZER_KEYS, TrainConfig
from madcache.train.optim import cosine, lr_at, make_optimizer, milestones, param_groups, set_lr
from madcache.train.rundir import check_resume

REQUIRED = {"dataset": "vcr", "root": "r", "out": "o"}


def config(**values) -> TrainConfig:
    return TrainConfig.from_dict({**REQUIRED, **values})


# ----------------------------------------------------------------------------- schedules


def test_cosine_warms_up_then_decays_to_zero():
    """The demo teacher's schedule (2 warm-up steps of 6) and the adapters' (no warm-up)."""
    assert [cosine(k, 6, base=1.0, warm=2) for k in range(6)] == pytest.approx(
        [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]
    )
    assert [cosine(k, 4, base=2.0) for k in range(4)] == pytest.approx(
        [2.0, 1 + math.cos(math.pi / 4), 1.0, 1 + math.cos(3 * math.pi / 4)]
    )


def test_uniter_linear_is_get_lr_sched_counted_from_step_1():
    # UNITER optim/sched.py: lr(s) = base * (s / W if s < W else max(0, (T - s) / (T - W))),
    # s = 1..T (global_step is incremented before get_lr_sched), 0 -> 1e-8. T = 10, W = 2.
    c = config(schedule="uniter-linear")
    lrs = [lr_at(k, 10, base=1.0, warmup=0.2, config=c) for k in range(10)]
    assert lrs == pytest.approx(
        [1 / 2, 8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 1e-8], rel=1e-12, abs=0
    )
    # madcache's linear is the same warm-up, and the decay one step later (unchanged default)
    linear = [lr_at(k, 10, base=1.0, warmup=0.2) for k in range(10)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])

    # the published recipe (config/train-vcr-base-4gpu.json): 6e-5, 800 of 8000 steps
    def at(k):
        return lr_at(k, 8000, base=6e-5, warmup=0.1, config=c)

    assert at(0) == pytest.approx(6e-5 / 800) and at(798) == pytest.approx(6e-5 * 799 / 800)
    assert at(799) == pytest.approx(6e-5) and at(800) == pytest.approx(6e-5 * 7199 / 7200)
    assert at(7998) == pytest.approx(6e-5 / 7200) and at(7999) == 1e-8


def test_multistep_is_vlbert_warmup_multistep_lr_stepped_before_each_update():
    # VL-BERT common/lr_scheduler.py, stepped before each optimizer step (common/trainer.py),
    # so update k has last_epoch t = k + 1. cfgs/vcr/base_q2a_4x16G_fp32.yaml: LR 7e-5 x batch
    # 64, WARMUP_STEPS 1000, linear from WARMUP_FACTOR 0, LR_STEP 14,18 of 20 epochs, x 0.1.
    # 1000 steps per epoch: T = 20000, W = 1000, milestones 14000 and 18000.
    base = 7e-5 * 64
    c = config(
        schedule="multistep",
        lr_steps=[14 / 20, 18 / 20],
        lr_factor=0.1,
        warmup_method="linear",
        warmup_factor=0.0,
    )

    def at(k):
        return lr_at(k, 20000, base=base, warmup=0.05, config=c)

    assert at(0) == pytest.approx(base * 1 / 1000) and at(499) == pytest.approx(base * 0.5)
    assert at(998) == pytest.approx(base * 0.999) and at(999) == pytest.approx(base)
    assert at(13998) == pytest.approx(base) and at(13999) == pytest.approx(base * 0.1)
    assert at(17998) == pytest.approx(base * 0.1) and at(17999) == pytest.approx(base * 0.01)
    assert at(19999) == pytest.approx(base * 0.01)
    # the linear warm-up from a factor: w(t) = f (1 - t / W) + t / W, here f = 1/3, W = 4
    c = config(schedule="multistep", warmup_factor=1 / 3)
    assert [lr_at(k, 10, base=1.0, warmup=0.4, config=c) for k in range(5)] == pytest.approx(
        [1 / 3 * 3 / 4 + 1 / 4, 1 / 3 * 2 / 4 + 2 / 4, 1 / 3 * 1 / 4 + 3 / 4, 1.0, 1.0]
    )
    # constant warm-up (VL-BERT's default factor 1/3): the factor until t = W
    c = config(
        schedule="multistep",
        warmup_method="constant",
        warmup_factor=1 / 3,
        lr_steps=[0.5],
        lr_factor=0.5,
    )
    assert [lr_at(k, 10, base=1.0, warmup=0.4, config=c) for k in range(10)] == pytest.approx(
        [1 / 3, 1 / 3, 1 / 3, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    )


def test_milestones_floor_fractions_of_the_stage():
    assert milestones([0.7, 0.9], 20000) == [14000, 18000]
    assert milestones([0.57], 100) == [57]  # 0.57 * 100 = 56.99999999999999 in floats
    assert milestones([14 / 20], 333) == [233]  # VL-BERT: int(14 * 333 / 20)


def test_schedule_settings_are_checked_in_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=r"^lr_steps: only the multistep schedule"):
        config(lr_steps=[0.5])
    with pytest.raises(ConfigError, match=r"^lr_steps: fractions .* got \[0.9, 0.5\]"):
        config(schedule="multistep", lr_steps=[0.9, 0.5])
    with pytest.raises(
        ConfigError,
        match=r"train.optimizer: expected one of 'adamw', "
        r"'uniter-adamw', 'sgd', got 'adam'",
    ):
        config(optimizer="adam")
    monkeypatch.setattr(loop_mod, "run_training", lambda c: {"history": [], "eval": {}})
    base = ["train", "--dataset", "vcr", "--root", "r", "--out", "o"]
    for flags, message in (
        (["--optimizer", "adam"], "'--optimizer'"),
        (["--lr-steps", "0.5"], "lr_steps: only the multistep schedule"),
        (["--momentum", "1"], "'--momentum'"),
    ):
        result = CliRunner().invoke(cli, [*base, *flags])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    seen = {}
    monkeypatch.setattr(
        loop_mod, "run_training", lambda c: seen.setdefault("c", c) and {"history": [], "eval": {}}
    )
    result = CliRunner().invoke(
        cli,
        [
            *base,
            "--optimizer",
            "sgd",
            "--schedule",
            "multistep",
            "--lr-steps",
            "0.7",
            "--lr-steps",
            "0.9",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (seen["c"].optimizer, seen["c"].lr_steps) == ("sgd", [0.7, 0.9])


# ----------------------------------------------------------------------------- groups


class UniterLike(nn.Module):
    """Parameter names as UNITER's: `LayerNorm`s, an `img_layer_norm` (a LayerNorm whose name
    UNITER's rule does not catch), a 1-d learned vector, the task head."""

    head_prefixes = ("head.",)

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.img_layer_norm = nn.LayerNorm(4)
        self.token = nn.Parameter(torch.zeros(4))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def names(model, projections, group):
    lookup = {id(p): n for n, p in model.named_parameters()}
    lookup.update({id(p): f"projections.{n}" for n, p in projections.named_parameters()})
    return sorted(lookup[id(p)] for p in group["params"])


def test_groups_decay_by_the_no_decay_rule_and_give_the_head_its_multiplier():
    model, proj = UniterLike(), nn.Linear(4, 2)
    # madcache's default: two groups, ndim >= 2 decayed (today's make_optimizer exactly)
    groups = param_groups(model, proj, config())
    assert [names(model, proj, g) for g in groups] == [
        ["dense.weight", "head.0.weight", "projections.weight"],
        [
            "LayerNorm.bias",
            "LayerNorm.weight",
            "dense.bias",
            "head.0.bias",
            "head.1.bias",
            "head.1.weight",
            "img_layer_norm.bias",
            "img_layer_norm.weight",
            "projections.bias",
            "token",
        ],
    ]
    assert [(g["weight_decay"], g["lr_mul"]) for g in groups] == [(0.01, 1.0), (0.0, 1.0)]
    # UNITER's name rule and lr_mul: the head apart; img_layer_norm.weight, the vector and the
    # head's norm weight (head.1.weight) are decayed, as build_optimizer decays them
    groups = param_groups(model, proj, config(no_decay="names", head_lr_mul=10.0))
    assert [names(model, proj, g) for g in groups] == [
        ["dense.weight", "img_layer_norm.weight", "projections.weight", "token"],
        [
            "LayerNorm.bias",
            "LayerNorm.weight",
            "dense.bias",
            "img_layer_norm.bias",
            "projections.bias",
        ],
        ["head.0.weight", "head.1.weight"],
        ["head.0.bias", "head.1.bias"],
    ]
    assert [g["lr_mul"] for g in groups] == [1.0, 1.0, 10.0, 10.0]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    optimizer = make_optimizer(model, proj, config(no_decay="names", head_lr_mul=10.0))
    set_lr(optimizer, 2e-5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-5, 2e-5, 2e-4, 2e-4])
    # VL-BERT: every parameter decays (SGD's weight decay on all of them)
    groups = param_groups(model, proj, config(no_decay="none"))
    assert len(groups[0]["params"]) == 13 and not groups[1]["params"]


def test_the_optimizers_and_their_settings():
    model, proj = UniterLike(), nn.Linear(4, 2)
    adam = make_optimizer(model, proj, config(adam_beta2=0.98, adam_eps=1e-6))
    assert isinstance(adam, torch.optim.AdamW)
    assert adam.param_groups[0]["betas"] == (0.9, 0.98) and adam.param_groups[0]["eps"] == 1e-6
    default = make_optimizer(model, proj, config())
    assert default.param_groups[0]["betas"] == (0.9, 0.999) and default.defaults["eps"] == 1e-8
    sgd = make_optimizer(
        model, proj, config(optimizer="sgd", momentum=0.9, weight_decay=1e-4, no_decay="none")
    )
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 1e-4
    assert not sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["dampening"] == 0


def test_uniter_adamw_is_optim_adamw_py_step_for_step():
    """Two steps on one weight, worked by hand from UNITER's optim/adamw.py: the step size
    lr sqrt(1 - b2^n) / (1 - b1^n), eps added to sqrt(v) itself, the decay after the update."""
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = make_optimizer(
        nn.ParameterDict({"w": p}),
        nn.Module(),
        config(
            optimizer="uniter-adamw",
            adam_beta2=0.98,
            adam_eps=1e-6,
            weight_decay=0.01,
            no_decay="none",
            lr=0.1,
        ),
    )
    assert type(optimizer).__name__ == "UniterAdamW"
    x, m, v = 1.0, 0.0, 0.0
    for n, g in ((1, 0.5), (2, -0.25)):
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        m, v = 0.9 * m + 0.1 * g, 0.98 * v + 0.02 * g * g
        x -= 0.1 * (1 - 0.98**n) ** 0.5 / (1 - 0.9**n) * m / (v**0.5 + 1e-6)
        x -= 0.1 * 0.01 * x
        assert p.item() == pytest.approx(x, rel=1e-15, abs=0)
    assert float(optimizer.state_dict()["state"][0]["step"]) == 2.0
    # torch's AdamW from the same start: eps inside the bias correction, decay first
    q = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    torch_adamw = make_optimizer(
        nn.ParameterDict({"w": q}),
        nn.Module(),
        config(adam_beta2=0.98, adam_eps=1e-6, weight_decay=0.01, no_decay="none", lr=0.1),
    )
    for g in (0.5, -0.25):
        q.grad = torch.tensor([g], dtype=torch.float64)
        torch_adamw.step()
    assert q.item() != p.item() and q.item() == pytest.approx(p.item(), abs=1e-3)


def test_a_head_multiplier_needs_a_declared_head():
    class Headless(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(2, 2)

    with pytest.raises(
        ConfigError,
        match=r"^head_lr_mul: student 'single-stream' declares no "
        r"task head",
    ):
        param_groups(Headless(), nn.Linear(2, 2), config(head_lr_mul=10.0))


def test_the_built_in_students_declare_their_head():
    from madcache.students import build_student
    from madcache.students.single_stream import SingleStreamStudent
    from madcache.students.vilt import ViltStudent
    from madcache.students.visualbert import VisualBertStudent
    from madcache.train.optim import head_names

    for cls in (SingleStreamStudent, VisualBertStudent, ViltStudent):
        assert cls.head_prefixes == ("head.",)
    student = build_student("single-stream")
    assert (
        head_names(student)
        == {n for n, _ in student.named_parameters() if n.startswith("head.")}
        != set()
    )


# ----------------------------------------------------------------------------- resume

SGD = dict(
    method="md-ts-cw",
    optimizer="sgd",
    momentum=0.9,
    weight_decay=1e-3,
    no_decay="none",
    schedule="multistep",
    lr_steps=[0.5],
    warmup=0.2,
    lr=5e-2,
    head_lr_mul=3.0,
    eval_every=2,
    checkpoint_every=4,
)


@pytest.mark.parametrize(
    "optimizer, buffer", [("sgd", "momentum_buffer"), ("uniter-adamw", "exp_avg_sq")]
)
def test_resumed_equals_uninterrupted(standins, tmp_path, monkeypatch, optimizer, buffer):
    """SGD's momentum buffers (UNITER's AdamW's moments and step) and the head's lr_mul are
    checkpointed and restored: the resumed run takes the same steps (per-step losses and rates,
    the head's at 3 x) and ends at the same weights, bit for bit."""
    recipe = {**SGD, "optimizer": optimizer}
    monkeypatch.setattr(standins.TinyStudent, "head_prefixes", ("head.",), raising=False)
    steps = []
    real_step = loop_mod.train_step

    def spy(training, batch, lr):
        parts = real_step(training, batch, lr)
        rates = tuple(g["lr"] for g in training.optimizer.param_groups)
        steps.append((training.state.global_step, lr, rates, parts["loss"]))
        return parts

    monkeypatch.setattr(loop_mod, "train_step", spy)
    full = loop_mod.train(standins.make_setup(tmp_path / "full", **recipe))
    full_steps, steps[:] = list(steps), []
    full_weights = load_file(str(tmp_path / "full" / "run" / "checkpoint.safetensors"))
    assert any(k.endswith(buffer) for k in full_weights)

    calls = {"n": 0}
    real_loss = loop_mod.StageLoss.forward

    def crash_after_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop_mod.StageLoss, "forward", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        loop_mod.train(standins.make_setup(tmp_path / "cut", **recipe))
    before = list(steps)
    saved = load_file(str(tmp_path / "cut" / "run" / "checkpoint.safetensors"))
    assert any(k.endswith(buffer) for k in saved)
    steps[:] = []
    monkeypatch.setattr(loop_mod.StageLoss, "forward", real_loss)
    resumed = loop_mod.train(standins.make_setup(tmp_path / "cut", **recipe, resume=True))
    resumed_weights = load_file(str(tmp_path / "cut" / "run" / "checkpoint.safetensors"))

    assert before == full_steps[: len(before)]
    assert steps == full_steps[4:] and len(steps) == len(full_steps) - 4  # from step 4's ckpt
    # 9 steps: warm-up (2), the peak, x 0.1 from t = floor(0.5 x 9) = 4
    assert sorted({lr for _, lr, _, _ in full_steps}) == pytest.approx([5e-3, 2.5e-2, 5e-2])
    assert all(rates == pytest.approx((lr, lr, 3 * lr, 3 * lr)) for _, lr, rates, _ in steps)
    assert resumed["history"] == full["history"] and resumed["eval"] == full["eval"]
    assert (full["training"]["optimizer"], full["training"]["schedule"]) == (optimizer, "multistep")
    assert full_weights.keys() == resumed_weights.keys()
    for key in full_weights:
        assert torch.equal(full_weights[key], resumed_weights[key]), key


def test_a_changed_optimizer_or_schedule_is_refused_on_resume(standins, tmp_path, monkeypatch):
    monkeypatch.setattr(standins.TinyStudent, "head_prefixes", ("head.",), raising=False)
    loop_mod.train(standins.make_setup(tmp_path, **{**SGD, "epochs": 1}))
    for change, message in (
        ({"optimizer": "adamw"}, "optimizer: run 'sgd', now 'adamw'"),
        ({"momentum": 0.5}, "momentum: run 0.9, now 0.5"),
        ({"lr_steps": [0.6]}, "lr_steps: run [0.5], now [0.6]"),
        ({"head_lr_mul": 1.0}, "head_lr_mul: run 3.0, now 1.0"),
    ):
        with pytest.raises(
            ConfigError, match=r"^--resume: .*" + message.replace("[", r"\[").replace("]", r"\]")
        ):
            loop_mod.train(
                standins.make_setup(tmp_path, **{**SGD, "epochs": 1, **change, "resume": True})
            )


def test_a_run_recorded_before_the_optimizer_settings_resumes_with_their_defaults(tmp_path):
    current = config().to_dict()
    older = {k: v for k, v in current.items() if k not in OPTIMIZER_KEYS}
    (tmp_path / "config.json").write_text(json.dumps(older))
    check_resume(tmp_path, current, {})  # AdamW + linear: the same run
    with pytest.raises(ConfigError, match="optimizer: run 'adamw', now 'sgd'"):
        check_resume(tmp_path, config(optimizer="sgd").to_dict(), {})
