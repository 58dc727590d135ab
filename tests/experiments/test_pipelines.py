"""Every shipped pipeline file loads and validates; the paper protocols have >= 4 seeds and the
paper's low-shot sizes; the demo covers baseline / MD / MAD, SM and zero-shot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from madcache.demo.run import PIPELINE as DEMO_PIPELINE
from madcache.experiments.sweep import load_sweep, plan

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
PAPER = {"vcr-lowshot": ("vcr", [100, 1000, None], ["val", "val_sm"]),
         "snli-ve-lowshot": ("snli-ve", [100, 1000], ["dev"]),
         "vqa-lowshot": ("vqa", [100, 1000], ["val"])}


def placeholders(path: Path) -> list[str]:
    """`NAME=/x` for each placeholder the file needs from the user (no default in [vars])."""
    text = path.read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    return [f"{name}=/data/{name.lower()}" for name in sorted(names)]


def test_every_shipped_pipeline_is_tested():
    assert sorted(p.stem for p in PIPELINES.glob("*.toml")) == sorted(PAPER)
    assert DEMO_PIPELINE.is_file()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_protocols(name, monkeypatch):
    path = PIPELINES / f"{name}.toml"
    dataset, shots, evals = PAPER[name]
    for item in placeholders(path):
        monkeypatch.delenv(item.split("=")[0], raising=False)
    config = load_sweep(path, [o for o in placeholders(path) if "ROOT" in o or "REGIONS" in o])
    assert config.dataset == dataset and config.shots == shots and config.eval == evals
    assert len(config.seeds) >= 4
    assert {"baseline", "md", "mad"} <= set(config.methods)
    assert config.zero_shot and config.teachers[0].eval_caches
    assert config.root.startswith("/data/") and Path(config.teachers[0].cache).is_absolute()
    assert config.train["w"] == 0.05 and config.train["m"] == 2
    specs = plan(config)
    assert len({s.name for s in specs}) == len(specs)


def test_the_demo_pipeline():
    config = load_sweep(DEMO_PIPELINE, ["DEMO_DIR=/tmp/somewhere/demo"])
    assert {"baseline", "md", "mad"} <= set(config.methods)   # issue 13; ablations: diagnose
    assert len(config.seeds) >= 4 and config.shots == [32]    # demo run replaces the shots
    assert config.students[0].options["init_from"] == "/tmp/somewhere/demo/student"
    assert config.train["af_lr"] == config.train["lr"] / 2       # UNITER's AF/task ratio
    assert config.dataset == "vcr" and "val_sm" in config.eval and config.zero_shot
    demo = Path("/tmp/somewhere/demo")
    assert config.root == str(demo / "world" / "vcr")
    assert config.out == str(demo / "runs")
    assert config.teachers[0].cache.startswith(str(demo / "cache"))
    assert len(plan(config)) == len(config.methods) * len(config.seeds)
