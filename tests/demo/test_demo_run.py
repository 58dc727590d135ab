"""`madcache demo run` end to end on the small world with tiny settings, and its rerun — from a
wheel installed outside the checkout, so the demo works for a user who ran `pip install madcache`
(its pipeline file is package data)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from madcache.cli import cli

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--size",
    "small",
    "--teacher-steps",
    "5",
    "--student-steps",
    "2",
    "--jobs",
    "1",
    "--no-progress",
    "--regime",
    "regime.toml",
    "--set",
    "seeds=[0]",
    "--set",
    "shots=[4]",
    "--set",
    'methods=["baseline","mad"]',
    "--set",
    "train.epochs=1",
    "--set",
    "train.af_max_steps=2",
    "--set",
    "adapter.epochs=1",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """madcache built as a wheel and installed into a folder of its own (its dependencies come
    from the test environment); returns the environment that imports it from there."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # built from a copy: the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "madcache", source / "madcache", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(source)],
        check=True,
        cwd=base,
        capture_output=True,
    )
    wheel = next((base / "dist").glob("madcache-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(base / "site"), str(wheel)],
        check=True,
        cwd=base,
        capture_output=True,
    )
    return {**os.environ, "PYTHONPATH": str(base / "site"), "TQDM_DISABLE": "1"}


def madcache(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "madcache", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_installed_package_is_the_wheel_and_ships_the_demo_pipeline(installed, tmp_path):
    probe = (
        "import madcache, madcache.demo.run as r; "
        "print(madcache.__file__); print(r.PIPELINE.is_file())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=installed,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    location, shipped = done.stdout.split()
    assert Path(location).is_relative_to(Path(installed["PYTHONPATH"])) and shipped == "True"
    assert madcache(["demo", "run", "--help"], installed, tmp_path).returncode == 0


def test_bad_settings_fail_before_the_first_stage(tmp_path):
    from madcache.core.errors import ConfigError
    from madcache.demo.run import DemoConfig

    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "run", "--out", str(out), "--set", "train.lr=fast"])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.endswith("Error: --set train.lr: expected a number, got 'fast'\n")
    with pytest.raises(ConfigError, match="^jobs: must be >= 1, got 0$"):
        DemoConfig.from_dict({"jobs": 0})
    with pytest.raises(ConfigError, match="^overrides: expected a list, got 'seeds=\\[0\\]'$"):
        DemoConfig.from_dict({"overrides": "seeds=[0]"})


@pytest.mark.slow
def test_demo_run_builds_every_stage_and_a_rerun_reuses_them(installed, tmp_path):
    out = tmp_path / "demo"
    (tmp_path / "regime.toml").write_text(
        "shots = [2]\nseeds = [0]\nmargin = 5.0\ndev_fraction = 0.2\n"
    )
    first = madcache(["demo", "run", "--out", "demo", *TINY], installed, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted(
        p.parent.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("metrics.json")
    )
    assert runs == ["vcr/single-stream/baseline/k4/seed0", "vcr/single-stream/mad/k4/seed0"]
    metrics = json.loads((out / "runs" / runs[1] / "metrics.json").read_text())
    assert metrics["status"] == "complete" and set(metrics["eval"]) == {"val", "val_sm"}
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.csv").is_file()
    assert "| single-stream | mad |" in first.stdout.replace("  ", " ")
    regime = json.loads((out / "regime" / "regime.json").read_text())
    assert [t["shots"] for t in regime["tried"]] == [2] and regime["shots"] == 2
    assert (out / "student" / "student.json").is_file()
    assert json.loads((out / "runs" / runs[0] / "config.json").read_text())["student_options"][
        "init_from"
    ] == str((out / "student").resolve())

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    second = madcache(["demo", "run", "--out", "demo", *TINY], installed, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
