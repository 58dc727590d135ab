"""Golden loss curves: the first steps of baseline, MD, MAD (its AF stage and its task stage) and
MD-TS-CW with gradient accumulation and clipping, trained on the stand-ins of standins.py, every
step's loss and loss parts pinned to 1e-6 in golden_curves.json (timm's golden tensors,
torchdistill's pre-computed losses). A change to the loop, the losses, the optimizer, the
schedule or the data order that moves any number fails here.

A change that is meant to move them regenerates the file, and its commit says why:

    python tests/train/test_golden_curves.py --write
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).with_name("golden_curves.json")
TOLERANCE = 1e-6
STEPS = 8
# name -> the stand-in run: eval_every=1 makes the history one record per step (its loss and
# parts are that step's, not means); AF steps come first, then the task's.
RUNS = {
    "baseline": dict(method="baseline"),
    "md": dict(method="md"),
    "mad": dict(method="mad", af_max_steps=4),
    "md-ts-cw-accum-clip": dict(method="md-ts-cw", grad_accum=2, grad_clip=0.5),
}


def _standins():
    if "train_standins" not in sys.modules:  # run as a script (--write), not by pytest
        spec = importlib.util.spec_from_file_location(
            "train_conftest", Path(__file__).with_name("conftest.py")
        )
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return sys.modules["train_standins"]


def curves(tmp: Path) -> dict[str, dict]:
    """Every run of RUNS: its per-step history (stage, step, loss, parts) and its evaluation."""
    from madcache.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reductions' split, as `madcache train` pins it
    try:
        out = {}
        for name, options in RUNS.items():
            metrics = train(
                _standins().make_setup(tmp / name, max_steps=STEPS, eval_every=1, **options)
            )
            out[name] = {
                "history": [
                    {k: h[k] for k in ("stage", "step", "loss", "parts")}
                    for h in metrics["history"]
                ],
                "eval": metrics["eval"],
            }
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    return curves(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", list(RUNS))
def test_the_loss_curve_is_the_golden_one(computed, name):
    golden = json.loads(GOLDEN.read_text())[name]
    got = computed[name]
    assert [(h["stage"], h["step"]) for h in got["history"]] == [
        (h["stage"], h["step"]) for h in golden["history"]
    ]
    for step, (a, b) in enumerate(zip(got["history"], golden["history"])):
        assert set(a["parts"]) == set(b["parts"]), step
        where = f"{name} {a['stage']} step {a['step']}"
        assert a["loss"] == pytest.approx(b["loss"], rel=TOLERANCE, abs=TOLERANCE), where
        for part, value in b["parts"].items():
            assert a["parts"][part] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (
                where,
                part,
            )
    assert got["eval"].keys() == golden["eval"].keys()
    for split, scores in golden["eval"].items():
        assert got["eval"][split] == pytest.approx(scores, rel=TOLERANCE, abs=TOLERANCE), split


def test_the_golden_runs_cover_every_kind_of_step():
    """What the file pins: both stages, each distillation term, CW's firing rate, the clipped
    gradient norm."""
    golden = json.loads(GOLDEN.read_text())
    parts = {p for run in golden.values() for h in run["history"] for p in h["parts"]}
    assert {"task", "mlm", "itm", "dv", "dt", "dwt", "cw_fired", "grad_norm"} <= parts
    assert [h["stage"] for h in golden["mad"]["history"]] == ["af"] * 4 + ["task"] * STEPS
    assert all(len(run["history"]) >= STEPS for run in golden.values())


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/train/test_golden_curves.py --write")
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(curves(Path(tmp)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
