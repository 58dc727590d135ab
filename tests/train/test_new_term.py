"""A distillation term registered from outside madcache (issue 34.2): one `TERMS.register` line
and a method that lists it, and the trainer loads its target, builds and trains its projection
and adds it to the loss, with no other change. Stand-ins from standins.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F
from train_standins import DV, H, make_setup, regions  # registered by conftest.py

from madcache.method.losses import TERMS, Term
from madcache.method.methods import METHODS, Method, task
from madcache.train.loop import StageLoss, train
from madcache.train.setup import make_projections
from madcache.train.stream import MicroBatch


def cls_to_image_cosine(out, targets, projections) -> torch.Tensor:
    """1 - cos(P_c(mean over texts of the student's CLS), V_t) per instance: a term on the
    cached image features through a projection of its own."""
    student = projections.cls_to_image(out.cls_token.mean(dim=1))
    return 1 - F.cosine_similarity(student, targets.image, dim=-1)


@pytest.fixture
def registered(monkeypatch):
    """The term `dci` and the method `md-text-dci` (task + w (L_dt + dci)), for this test only."""
    monkeypatch.setattr(TERMS, "_entries", dict(TERMS._entries))
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    TERMS.register(
        "dci",
        Term(needs="image", compute=cls_to_image_cosine, projection="cls_to_image", dim="image"),
    )
    METHODS.register("md-text-dci", Method("md-text-dci", (task("dt", "dci"),)))
    return METHODS.get("md-text-dci")


def test_the_term_declares_what_the_method_loads_and_trains(registered):
    assert registered.needs == ("text_eos", "image")
    assert not registered.distils_words
    cache = SimpleNamespace(manifest={"dims": {"image": 7, "text": 3}})
    projections = make_projections(SimpleNamespace(hidden_size=4), cache, registered)
    assert (projections.text.out_features, projections.cls_to_image.out_features) == (3, 7)
    assert projections.vision is None and projections.word is None


def test_a_method_with_the_new_term_trains(registered, tmp_path):
    setup = make_setup(tmp_path, method="md-text-dci", max_steps=4)
    targets = setup.task_source.chunk(0).targets
    assert targets.image.shape == (10, DV) and targets.text_eos is not None
    assert targets.word_feat is None and targets.logits is None  # not needed: not loaded
    assert setup.projections.cls_to_image.weight.shape == (DV, H)

    # its loss is the task loss + w (L_dt + dci), as any term's
    examples = setup.task_source.examples[:4]
    micro = MicroBatch(
        examples,
        targets.rows(torch.arange(4)),
        setup.student.prepare(examples, regions(examples)),
        1.0,
    )
    setup.student.eval()
    loss, parts = StageLoss(setup)(stage="task", micro=micro, generator=torch.Generator())
    assert set(parts) == {"task", "dt", "dci", "loss"}
    assert loss.item() == pytest.approx(
        parts["task"] + setup.config.w * (parts["dt"] + parts["dci"]), rel=1e-5
    )

    before = setup.projections.cls_to_image.weight.detach().clone()
    metrics = train(setup)
    assert metrics["status"] == "complete" and "dci" in metrics["history"][-1]["parts"]
    assert not torch.equal(before, setup.projections.cls_to_image.weight)  # it trained
