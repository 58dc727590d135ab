"""`madcache demo study` on the small world with tiny settings: every stage, the chosen step of
every run, the seeds the SM spread needs, and a rerun after a lost run that trains only that run
again."""

import json

import pytest
from click.testing import CliRunner

from madcache.cli import cli
from madcache.core.errors import ConfigError
from madcache.demo.study import StudyConfig, seeds_needed

TINY = [
    "--lrs",
    "1e-3",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--recipe-shots",
    "2",
    "--recipe-seeds",
    "1",
    "--seeds",
    "2",
    "--max-seeds",
    "2",
    "--half-width",
    "0.01",
    "--jobs",
    "1",
    "--no-progress",
    "--set",
    "train.af_max_steps=2",
]


def test_seeds_needed_follows_the_larger_paired_sm_spread():
    runs = {
        "baseline": {s: {"val_sm": 50.0} for s in range(3)},
        "md": {0: {"val_sm": 50.0}, 1: {"val_sm": 52.0}, 2: {"val_sm": 54.0}},  # sd 2
        "mad": {s: {"val_sm": 60.0} for s in range(3)},
    }  # sd 0
    # t_{0.975, n-1} * 2 / sqrt(n) <= 1: n = 18 (2.110 * 2 / 4.243 = 0.995; n = 17: 1.028)
    assert seeds_needed(runs, 1.0) == {"seeds": 18, "sd": {"md": 2.0, "mad": 0.0}}


def test_bad_study_settings_are_refused():
    with pytest.raises(ConfigError, match="max_seeds: must be >= seeds"):
        StudyConfig(seeds=5, max_seeds=4)
    result = CliRunner().invoke(cli, ["demo", "study", "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output


@pytest.mark.slow
def test_demo_study_runs_every_stage_and_a_rerun_finishes_only_what_is_missing(tmp_path):
    from madcache.demo.run import (
        DemoConfig,
        DemoPaths,
        make_cache,
        make_regions,
        make_student,
        make_teacher,
        make_world,
    )

    out = tmp_path / "demo"
    paths, demo = (
        DemoPaths(out),
        DemoConfig(out=out, size="small", teacher_steps=5, student_steps=2, progress=False),
    )
    make_world(paths, demo), make_teacher(paths, demo), make_student(paths, demo)
    make_cache(paths, demo, "train"), make_cache(paths, demo, "val"), make_regions(paths, demo)
    (tmp_path / "regime.toml").write_text(
        "shots = [2]\nseeds = [0]\nmargin = 5.0\ndev_fraction = 0.2\n"
    )
    args = ["demo", "study", "--out", str(out), "--regime", str(tmp_path / "regime.toml"), *TINY]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output[-3000:]
    summary = json.loads((out / "study" / "study.json").read_text())
    assert [p["lr"] for p in summary["recipe"]["points"]] == [1e-3]
    assert summary["recipe"]["chosen"] == {"lr": 1e-3} and summary["shots"] == 2
    # the regime check reused the recipe's runs (same settings, same folder)
    assert summary["regime"]["tried"][0]["baseline_dev"] == [
        r["dev"] for r in summary["recipe"]["points"][0]["runs"]
    ]
    # one round: the need of the observed SM spread, capped by --max-seeds
    runs = {m: {int(s): r for s, r in by_seed.items()} for m, by_seed in summary["runs"].items()}
    assert summary["rounds"] == [{"seeds": 2, "needed": seeds_needed(runs, 0.01)}]
    assert summary["seeds"] == 2
    for method in ("baseline", "md", "mad"):
        by_seed = summary["runs"][method]
        assert sorted(by_seed) == [str(s) for s in range(summary["seeds"])]
        for run in by_seed.values():
            assert run["step"] in (2, 4) and run["dev"] == max(v for _, v in run["curve"])
            assert {"val", "val_sm"} <= set(run)
    run_dir = out / "study" / "runs" / "vcr" / "single-stream" / "md" / "k2" / "seed1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"dev.jsonl", "val", "val_sm"}
    assert metrics["eval"]["dev.jsonl"]["q2a"] == metrics["selection"]["score"]
    assert "## 3. Runs: the step each selected on dev" in first.output

    # a run lost (killed before it finished): the rerun trains it alone and ends the same
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (out / "study").rglob("metrics.json")
        if p.parent != run_dir
    }
    (run_dir / "metrics.json").unlink()
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((out / "study" / "study.json").read_text())
    assert again["runs"] == summary["runs"] and again["recipe"] == summary["recipe"]


def test_the_study_adds_the_seeds_the_sm_spread_needs_up_to_max_seeds(tmp_path, monkeypatch):
    """The growth loop alone (sweeps stubbed): 4 seeds whose paired SM differences spread by
    about 6 points need more for ±5; the study grows to that need, then stops."""
    from types import SimpleNamespace

    import madcache.experiments.sweep as sweep_module
    from madcache.demo import study
    from madcache.demo.run import DemoPaths

    swings = [6.0, -6.0, 5.0, -5.0, 7.0, -7.0, 6.0, -6.0, 5.0, -5.0, 6.0, -6.0]
    calls = []

    def fake_sweep(pipeline, **_):
        calls.append(len(pipeline["seeds"]))
        planned = [
            SimpleNamespace(method=m, run_dir=(m, s))
            for m in study.METHODS
            for s in pipeline["seeds"]
        ]
        return SimpleNamespace(failed=[], planned=planned)

    def fake_selected(run_dir):
        method, seed = run_dir
        sm = 50.0 + (swings[seed] if method == "md" else 0.0)
        return {"seed": seed, "step": 100, "dev": 50.0, "curve": [], "val": 50.0, "val_sm": sm}

    monkeypatch.setattr(sweep_module, "run_sweep", fake_sweep)
    monkeypatch.setattr(sweep_module, "from_dict", lambda data, base: data)
    monkeypatch.setattr(study, "write_splits", lambda paths, pipeline: None)
    monkeypatch.setattr(study, "selected", fake_selected)
    monkeypatch.setattr(study, "make_study_report", lambda paths: {"markdown": ""})
    base = {"dataset": "vcr", "students": [], "train": {}}
    config = study.StudyConfig(seeds=4, max_seeds=12)
    result = study.study_runs(DemoPaths(tmp_path), tmp_path, base, 8, config, lambda line: None)
    first = {m: {s: fake_selected((m, s)) for s in range(4)} for m in study.METHODS}
    needed = study.seeds_needed(first, 5.0)["seeds"]
    assert 4 < needed <= 12 and calls[:2] == [4, needed]
    assert result["seeds"] == calls[-1] and len(calls) <= 3
    assert result["rounds"][-1]["needed"]["seeds"] <= result["seeds"]
    capped = study.study_runs(
        DemoPaths(tmp_path),
        tmp_path,
        base,
        8,
        study.StudyConfig(seeds=4, max_seeds=5),
        lambda line: None,
    )
    assert capped["seeds"] == 5 and [r["seeds"] for r in capped["rounds"]] == [4, 5]
