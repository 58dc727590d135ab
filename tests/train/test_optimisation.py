"""Gradient accumulation, precision, gradient clipping and what --resume refuses. Stand-ins come
from standins.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from madcache.core.errors import ConfigError
from madcache.train import loop as train_mod
from madcache.train.config import TrainConfig
from madcache.train.loop import train
from madcache.train.precision import resolve_precision


def run(standins, tmp_path, name, *, dropout=0.0, **overrides):
    setup = standins.make_setup(tmp_path / name, **overrides)
    setup.student.drop.p = dropout
    metrics = train(setup)
    return metrics, load_file(str(tmp_path / name / "run" / "checkpoint.safetensors"))


def applied_gradients(monkeypatch) -> list[list[torch.Tensor | None]]:
    """The gradients of every parameter at every optimizer step, as the optimizer sees them."""
    steps: list[list[torch.Tensor | None]] = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        steps.append(
            [
                None if p.grad is None else p.grad.clone()
                for group in self.param_groups
                for p in group["params"]
            ]
        )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    return steps


@pytest.mark.parametrize("method", ["md-ts", "md", "baseline"])
def test_batch_8_x_1_equals_batch_2_x_4(standins, tmp_path, monkeypatch, method):
    """The same global batch in 4 micro-batches of 2 (dropout off): at every step the same loss
    and the same applied gradient, to float tolerance. (Gradients, not final weights: Adam turns
    gradients whose true value is 0 — the multiple-choice head's bias, an L1 projection bias
    whose residual signs balance — into full-size steps of float noise. Not `mad`: CW's hard
    threshold r > 1 may flip for an instance whose ratio is within float noise of 1.)"""
    common = dict(method=method, batch_size=8, epochs=3, eval_every=2)
    gradients = applied_gradients(monkeypatch)
    whole, _ = run(standins, tmp_path, "whole", grad_accum=1, **common)
    whole_gradients = list(gradients)
    gradients.clear()
    micro, _ = run(standins, tmp_path, "micro", grad_accum=4, **common)
    assert micro["training"]["micro_batch"] == 2 and whole["training"]["micro_batch"] == 8
    # 10 examples, batch 8: steps of 8 and 2 rows, 3 epochs; a record every 2 steps
    assert [h["step"] for h in whole["history"]] == [2, 4, 6]
    for a, b in zip(whole["history"], micro["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["eval"] == b["eval"]
    assert len(whole_gradients) == len(gradients) == 6
    for step, (a, b) in enumerate(zip(whole_gradients, gradients)):
        for x, y in zip(a, b, strict=True):
            assert (x is None) == (y is None), step
            assert x is None or torch.allclose(x, y, atol=1e-6), step


def test_a_different_global_batch_does_change_the_weights(standins, tmp_path):
    """The control for the test above: it would notice a changed update."""
    _, a = run(standins, tmp_path, "a", method="md", batch_size=8, epochs=2)
    _, b = run(standins, tmp_path, "b", method="md", batch_size=4, epochs=2)
    assert not torch.allclose(a["student.emb.weight"], b["student.emb.weight"], atol=1e-4)


def test_precision_defaults_bf16_on_cuda_fp32_on_cpu():
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision(None, "cuda") == resolve_precision(None, "cuda:1") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ConfigError, match="precision: expected one of 'fp32', 'bf16'"):
        TrainConfig.from_dict(dict(dataset="vcr", root=".", out="o", precision="fp16"))


@pytest.mark.parametrize("precision,autocast", [(None, False), ("bf16", True)])
def test_bf16_runs_the_forward_under_autocast(standins, tmp_path, monkeypatch, precision, autocast):
    seen = []
    real = train_mod.StageLoss.forward

    def spy(module, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(module, **kwargs)

    monkeypatch.setattr(train_mod.StageLoss, "forward", spy)
    metrics = train(standins.make_setup(tmp_path, method="mad", precision=precision, epochs=1))
    assert seen and all(enabled == autocast for enabled, _ in seen)
    if autocast:
        assert all(dtype == torch.bfloat16 for _, dtype in seen)
    assert metrics["training"]["precision"] == ("bf16" if autocast else "fp32")
    assert torch.isfinite(torch.tensor(metrics["history"][-1]["loss"]))


def test_gradient_clipping_bounds_the_applied_gradient(standins, tmp_path, monkeypatch):
    norms = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [
            p.grad for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    train(standins.make_setup(tmp_path / "free", method="mad", epochs=1))
    assert min(norms) > 1e-3
    norms.clear()
    train(standins.make_setup(tmp_path / "clipped", method="mad", epochs=1, grad_clip=1e-3))
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)


def test_resume_refuses_settings_that_change_the_result(standins, tmp_path):
    train(standins.make_setup(tmp_path, method="md", checkpoint_every=2))
    with pytest.raises(ConfigError, match=r"other settings: lr: run 0.01, now 0.5\. "):
        train(standins.make_setup(tmp_path, method="md", checkpoint_every=2, resume=True, lr=0.5))
    with pytest.raises(ConfigError, match="precision: run None, now 'bf16'"):
        train(
            standins.make_setup(
                tmp_path, method="md", checkpoint_every=2, resume=True, precision="bf16"
            )
        )
    # how the global batch is split is not part of the result
    again = train(
        standins.make_setup(tmp_path, method="md", checkpoint_every=2, resume=True, grad_accum=2)
    )
    assert again["status"] == "complete"  # accepted; a finished run is left as it was
    assert json.loads((tmp_path / "run" / "config.json").read_text())["grad_accum"] == 1


def test_train_command_takes_the_scaling_flags(standins, monkeypatch, tmp_path):
    result, config = standins.run_cli(
        monkeypatch,
        [
            "--dataset",
            "vcr",
            "--root",
            "r",
            "--out",
            str(tmp_path / "o"),
            "--precision",
            "bf16",
            "--grad-accum",
            "4",
            "--grad-clip",
            "1.5",
            "--prefetch",
            "2",
            "--report-to",
            "tensorboard",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        config.precision,
        config.grad_accum,
        config.grad_clip,
        config.prefetch,
        config.report_to,
    ) == ("bf16", 4, 1.5, 2, "tensorboard")
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 reports
    result, _ = standins.run_cli(monkeypatch, ["--dataset", "vcr", "--root", "r", "--out", "o"])
    assert result.exit_code == 0 and result.output == ""
    bad, _ = standins.run_cli(
        monkeypatch, ["--dataset", "vcr", "--root", "r", "--out", "o", "--grad-accum", "0"]
    )
    assert bad.exit_code == 2 and "'--grad-accum': 0 is not in the range x>=1" in bad.output
