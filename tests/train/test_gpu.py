"""bf16 training on CUDA: autocast, TF32, pinned batches copied to the GPU (skipped without a GPU).
Stand-ins come from test_train.py."""

from __future__ import annotations


import pytest
import torch

from madcache.train import loop as train_mod
from madcache.train.loop import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def on_cuda(setup):
    """The stand-in setup on the GPU (the stand-in student's `prepare` leaves its inputs on the
    CPU, which only the training pipeline moves: no validation here)."""
    setup.student.to("cuda")
    setup.projections.to("cuda")
    setup.eval_examples = []
    return setup


def test_bf16_training_on_cuda(standins, tmp_path, monkeypatch):
    seen = []
    real = train_mod.loss_step

    def spy(setup, examples, targets, inputs):
        seen.append((inputs["ids"].device.type, targets.image.device.type,
                     torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))
        return real(setup, examples, targets, inputs)

    monkeypatch.setattr(train_mod, "loss_step", spy)
    setup = on_cuda(standins.make_setup(tmp_path, method="mad", device="cuda", chunk=4, epochs=2))
    before = setup.student.emb.weight.detach().clone()
    metrics = train(setup)
    assert metrics["training"]["precision"] == "bf16"
    assert torch.backends.cuda.matmul.allow_tf32
    assert seen and all(s == ("cuda", "cuda", True, torch.bfloat16) for s in seen)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in metrics["history"])
    assert not torch.equal(before, setup.student.emb.weight.detach())


def test_fp32_on_cuda_when_asked(standins, tmp_path):
    setup = on_cuda(standins.make_setup(tmp_path, method="md", device="cuda", precision="fp32",
                                 epochs=1))
    assert train(setup)["training"]["precision"] == "fp32"
