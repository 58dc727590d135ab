"""Every shipped pipeline file loads and validates; the paper protocols have >= 4 seeds and the
paper's low-shot sizes; the demo covers baseline / MD / MAD, SM and zero-shot; the students'
recipes carry their published optimizer settings (docs/students.md, "Published recipes")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from madcache.demo.run import PIPELINE as DEMO_PIPELINE
from madcache.experiments.sweep import load_sweep, plan

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
# recipes of students not ported yet: kept (and validated) beside the docs, not shipped to run
PENDING = Path(__file__).resolve().parents[2] / "docs" / "recipes"
PAPER = {
    "vcr-lowshot": ("vcr", [100, 1000, None], ["val", "val_sm"]),
    "snli-ve-lowshot": ("snli-ve", [100, 1000], ["dev"]),
    "vqa-lowshot": ("vqa", [100, 1000], ["val"]),
}
# the students' recipes: the student and the [train] values their published configs give
UNITER_VCR = {
    "optimizer": "uniter-adamw",
    "adam_beta1": 0.9,
    "adam_beta2": 0.98,
    "adam_eps": 1e-6,
    "lr": 6e-5,
    "weight_decay": 0.01,
    "no_decay": "names",
    "head_lr_mul": 1.0,
    "schedule": "uniter-linear",
    "warmup": 0.1,
    "max_steps": 8000,
    "grad_clip": 2.0,
}
RECIPES = {
    "vcr-lowshot-uniter": ("uniter", UNITER_VCR),
    "vcr-lowshot-villa": ("uniter", UNITER_VCR),
    "vcr-lowshot-vlbert": (
        "vl-bert",
        {
            "optimizer": "sgd",
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "no_decay": "none",
            "batch_size": 64,
            "lr": 7e-5 * 64,
            "schedule": "multistep",
            "warmup_method": "linear",
            "warmup_factor": 0.0,
            "lr_steps": [14 / 20, 18 / 20],
            "lr_factor": 0.1,
            "grad_clip": 10.0,
            "epochs": 30,
            "precision": "fp32",
        },
    ),
}


def placeholders(path: Path) -> list[str]:
    """`NAME=/x` for each placeholder the file needs from the user (no default in [vars])."""
    text = path.read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    return [f"{name}=/data/{name.lower()}" for name in sorted(names)]


def test_every_shipped_pipeline_is_tested():
    shipped = sorted(p.stem for p in [*PIPELINES.glob("*.toml"), *PENDING.glob("*.toml")])
    assert shipped == sorted({**PAPER, **RECIPES})
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
    assert {"baseline", "md", "mad"} <= set(config.methods)  # issue 13; ablations: diagnose
    assert len(config.seeds) >= 4 and config.shots == [32]  # demo run replaces the shots
    assert config.students[0].options["init_from"] == "/tmp/somewhere/demo/student"
    assert config.train["af_lr"] == config.train["lr"] / 2  # UNITER's AF/task ratio
    assert config.dataset == "vcr" and "val_sm" in config.eval and config.zero_shot
    demo = Path("/tmp/somewhere/demo")
    assert config.root == str(demo / "world" / "vcr")
    assert config.out == str(demo / "runs")
    assert config.teachers[0].cache.startswith(str(demo / "cache"))
    assert len(plan(config)) == len(config.methods) * len(config.seeds)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_student_recipes(name, monkeypatch):
    """The paper's VCR protocol with a student's published optimizer, schedule and clipping;
    every [train] value is checked (and each method's run config built) when the file loads."""
    path = recipe_path(name)
    student, published = RECIPES[name]
    for item in placeholders(path):
        monkeypatch.delenv(item.split("=")[0], raising=False)
    config = load_sweep(path, [o for o in placeholders(path) if "_DIR" not in o])
    assert config.dataset == "vcr" and config.shots == [100, 1000, None]
    assert config.eval == ["val", "val_sm"] and len(config.seeds) >= 4
    assert set(config.methods) == {"baseline", "md", "mad"}
    assert [s.name for s in config.students] == [student]
    assert config.students[0].options["checkpoint"].startswith("/data/")
    for key, value in published.items():
        assert config.train[key] == (value if isinstance(value, str) else pytest.approx(value)), key
    assert config.train["w"] == 0.05 and config.train["m"] == 2
    assert len(plan(config)) == len(config.methods) * len(config.seeds) * len(config.shots)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_student_recipes_name_a_registered_student(name):
    """A shipped recipe's student is registered; a pending one's (docs/recipes) is not yet, and
    this fails once it is, so the recipe moves into pipelines/ with its student."""
    from madcache.students import STUDENTS

    registered = RECIPES[name][0] in STUDENTS.names()
    assert registered == (recipe_path(name).parent == PIPELINES), (name, registered)


def recipe_path(name: str) -> Path:
    shipped = PIPELINES / f"{name}.toml"
    return shipped if shipped.is_file() else PENDING / f"{name}.toml"
