"""`madcache demo run` end to end on the small world with tiny settings, and its rerun."""

import json

import pytest

from click.testing import CliRunner

from madcache.cli import cli

TINY = ["--size", "small", "--teacher-steps", "5", "--jobs", "1", "--quiet",
        "--set", "seeds=[0]", "--set", "shots=[4]", "--set", 'methods=["baseline","mad"]',
        "--set", "train.epochs=1", "--set", "train.af_max_steps=2", "--set", "adapter.epochs=1"]


@pytest.mark.slow
def test_demo_run_builds_every_stage_and_a_rerun_reuses_them(tmp_path):
    out = tmp_path / "demo"
    first = CliRunner().invoke(cli, ["demo", "run", "--out", str(out), *TINY])
    assert first.exit_code == 0, first.output
    runs = sorted(p.parent.relative_to(out / "runs").as_posix()
                  for p in (out / "runs").rglob("metrics.json"))
    assert runs == ["vcr/single-stream/baseline/k4/seed0", "vcr/single-stream/mad/k4/seed0"]
    metrics = json.loads((out / "runs" / runs[1] / "metrics.json").read_text())
    assert metrics["status"] == "complete" and set(metrics["eval"]) == {"val", "val_sm"}
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.csv").is_file()
    assert "| single-stream | mad |" in first.output.replace("  ", " ")

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    second = CliRunner().invoke(cli, ["demo", "run", "--out", str(out), *TINY])
    assert second.exit_code == 0, second.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
