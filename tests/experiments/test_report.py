"""Reports: the numbers equal the means and sample stds (ddof = 1) of hand-written runs, every
cell lists its runs, runs.csv carries provenance, plots and the CLI work."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from click.testing import CliRunner

from madcache.evaluation.zeroshot import teachers_label
from madcache.experiments.cells import Cell, aggregate
from madcache.experiments.report import build_report
from madcache.experiments.runs import collect_runs

TEACHERS = {"vision": "clip-b16", "text": "clip-b16", "relevance": "clip-b16"}
Q2A = {  # (method, shots) -> per-seed q2a on val
    ("baseline", 100): [30.0, 31.0, 29.5, 32.5],
    ("mad", 100): [40.0, 41.5, 39.0, 41.0],
    ("mad", None): [77.0, 78.0],
}


def write_run(
    root,
    *,
    method,
    shots,
    seed,
    q2a,
    sm=None,
    status="complete",
    student="s1",
    teachers=TEACHERS,
    cw_fired=None,
):
    run = (
        root / "vcr" / student / method / ("full" if shots is None else f"k{shots}") / f"seed{seed}"
    )
    run.mkdir(parents=True)
    evaluation = {"val": {"q2a": q2a, "qa2r": q2a / 2, "q2ar": q2a / 4}}
    if sm is not None:
        evaluation["val_sm"] = {"q2a": sm, "qa2r": sm / 2, "q2ar": sm / 4}
    metrics = {
        "run": run.name,
        "dataset": "vcr",
        "method": method,
        "student": student,
        "teachers": teachers,
        "shots": shots,
        "seed": seed,
        "status": status,
        "history": [],
        "eval": evaluation,
        "cw_fired": cw_fired or {},
        "provenance": {
            "cache_fingerprint": "fp123",
            "split_file": f"splits/k{shots}-{seed}",
            "split_digest": "d",
            "git_commit": "abc",
            "madcache_version": "0",
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"method": method, "seed": seed, "lr": 6e-5}))
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for (method, shots), values in Q2A.items():
        for seed, value in enumerate(values):
            write_run(
                root,
                method=method,
                shots=shots,
                seed=seed,
                q2a=value,
                sm=value - 5 if shots == 100 else None,
            )
    write_run(root, method="mad", shots=100, seed=9, q2a=99.0, status="running")  # not counted
    return root


def test_cells_are_means_and_sample_stds_over_seeds(runs):
    cells = aggregate(collect_runs(runs))
    for (method, shots), values in Q2A.items():
        label = "full" if shots is None else f"k{shots}"
        cell = cells[("vcr", "s1", method, "clip-b16", "val", label, "q2a")]
        assert cell.n == len(values)
        assert cell.mean == pytest.approx(statistics.mean(values))
        assert cell.std == pytest.approx(statistics.stdev(values))  # ddof = 1
    sm = cells[("vcr", "s1", "baseline", "clip-b16", "val_sm", "k100", "q2ar")]
    assert sm.mean == pytest.approx(statistics.mean([(v - 5) / 4 for v in Q2A[("baseline", 100)]]))
    assert Cell([3.0], ["r"]).std is None and Cell([3.0], ["r"]).text() == "3.00 (n=1)"


def test_report_files(runs, tmp_path):
    out = tmp_path / "report"
    result = build_report(runs, out=out)
    markdown = (out / "report.md").read_text()
    assert markdown == result["markdown"]
    mean, std = statistics.mean(Q2A[("mad", 100)]), statistics.stdev(Q2A[("mad", 100)])
    assert "| student | method | teachers | val k100 | val full | val_sm k100 |" in markdown
    assert f"| s1 | mad | clip-b16 | {mean:.2f} ± {std:.2f} (n=4) |" in markdown
    lines = markdown.splitlines()
    assert lines.index(next(line for line in lines if "| s1 | baseline |" in line)) < lines.index(
        next(line for line in lines if "| s1 | mad |" in line)
    )
    with open(out / "report.csv") as handle:
        cells = list(csv.DictReader(handle))
    mad = next(
        c
        for c in cells
        if c["method"] == "mad"
        and c["shots"] == "k100"
        and c["split"] == "val"
        and c["metric"] == "q2a"
    )
    assert float(mad["mean"]) == pytest.approx(mean) and float(mad["std"]) == pytest.approx(std)
    assert mad["n"] == "4" and len(mad["runs"].split(";")) == 4
    assert "vcr/s1/mad/k100/seed0" in mad["runs"].split(";")
    full = next(
        c for c in cells if c["method"] == "mad" and c["shots"] == "full" and c["metric"] == "q2a"
    )
    assert full["n"] == "2" and float(full["std"]) == pytest.approx(statistics.stdev([77, 78]))
    with open(out / "runs.csv") as handle:
        listed = list(csv.DictReader(handle))
    assert len(listed) == 11
    running = next(r for r in listed if r["status"] == "running")
    assert running["run"] == "vcr/s1/mad/k100/seed9"
    first = next(r for r in listed if r["run"] == "vcr/s1/baseline/k100/seed0")
    assert (first["cache_fingerprint"], first["git_commit"], first["seed"]) == ("fp123", "abc", "0")
    assert json.loads(first["config"])["lr"] == 6e-5
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "vcr-val-q2a.png" in pngs and "vcr-val_sm-q2ar.png" in pngs
    assert (out / "vcr-val-q2a.png").read_bytes()[:4] == b"\x89PNG"


def test_zero_shot_results_are_included(runs, tmp_path):
    from madcache.evaluation.zeroshot import write_zero_shot

    write_zero_shot(
        {
            "dataset": "vcr",
            "split": "val",
            "teachers": TEACHERS,
            "cache": "c",
            "chance": {"q2a": 25.0},
            "protocols": {"ia": {"overall": {"q2a": 54.82, "n": 10}, "by_category": {}}},
        },
        runs / "vcr/zero-shot/t/val",
    )
    result = build_report(runs, out=tmp_path / "r", plots=False)
    assert "## Zero-shot: vcr val" in result["markdown"] and "54.82" in result["markdown"]
    with open(tmp_path / "r" / "report.csv") as handle:
        zero = [c for c in csv.DictReader(handle) if c["shots"] == "zero-shot"]
    assert zero[0]["method"] == "zero-shot:ia" and float(zero[0]["mean"]) == 54.82


def test_cw_firing_rates_are_reported(tmp_path):
    root = tmp_path / "runs"
    for seed, fired in enumerate([0.25, 0.75]):
        write_run(root, method="mad", shots=100, seed=seed, q2a=40.0, cw_fired={"task": fired})
    write_run(root, method="md", shots=100, seed=0, q2a=35.0)
    result = build_report(root, out=tmp_path / "r", plots=False)
    assert "### vcr: CW fired (% of training instances)" in result["markdown"]
    assert "| student | method | teachers | task k100 |" in result["markdown"]
    assert "| s1 | mad | clip-b16 | 50.00 ± 35.36 (n=2) |" in result["markdown"]
    assert "| s1 | md |" not in result["markdown"].split("CW fired")[1]
    with open(tmp_path / "r" / "runs.csv") as handle:
        listed = {r["run"]: r for r in csv.DictReader(handle)}
    assert json.loads(listed["vcr/s1/mad/k100/seed1"]["cw_fired"]) == {"task": 0.75}


def test_teachers_label():
    assert teachers_label(TEACHERS) == "clip-b16"
    assert (
        teachers_label({"vision": "vit-b16", "text": "roberta", "relevance": None})
        == "vit-b16+roberta"
    )
    assert teachers_label(None) == "-"


def test_cli_prints_the_table(runs, tmp_path):
    from madcache.cli import cli

    result = CliRunner().invoke(
        cli, ["report", str(runs), "--out", str(tmp_path / "o"), "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    assert "### vcr: q2a" in result.output and "(n=4)" in result.output
    assert (tmp_path / "o" / "runs.csv").is_file()


@pytest.mark.parametrize(
    "where,problem",
    [
        ("file", "is a file; give a folder for the report"),
        ("in-root", "is inside the dataset root"),
        ("root-parent", "contains the dataset root"),
    ],
)
def test_cli_refuses_an_output_location_like_every_command(runs, tmp_path, where, problem):
    """One line, exit code 2, nothing written: `--out` may not be a file, lie inside the dataset
    root a run trained on, or contain it (core.io.check_output_location)."""
    from madcache.cli import cli

    data = tmp_path / "data" / "vcr"
    (data / "images").mkdir(parents=True)
    for config in runs.rglob("config.json"):
        config.write_text(json.dumps({**json.loads(config.read_text()), "root": str(data)}))
    (tmp_path / "file").write_text("mine")
    out = {"file": tmp_path / "file", "in-root": data / "report", "root-parent": tmp_path / "data"}[
        where
    ]
    before = sorted(p.name for p in out.parent.iterdir())
    result = CliRunner().invoke(cli, ["report", str(runs), "--out", str(out), "--no-plots"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(f"Error: --out {out} ") and problem in lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == before
    assert (tmp_path / "file").read_text() == "mine"


# ----------------------------------------------------------------------------- paired statistics

T_975_2 = 4.302653  # t_{0.975, 2}, from a t table: 3 pairs
PAIRED = {  # method -> {seed: val q2a}; the baseline trains without a teacher (teachers "-")
    "baseline": {0: 30.0, 1: 32.0, 2: 31.0, 3: 29.0},
    "md": {0: 29.0, 1: 34.0, 2: 32.0},  # d = -1, 2, 1: interval spans 0
    "mad": {0: 33.0, 1: 36.0, 2: 33.0, 5: 50.0},  # d = 3, 4, 2; seed 5 has no baseline
}


@pytest.fixture
def paired_runs(tmp_path):
    root = tmp_path / "runs"
    for method, values in PAIRED.items():
        for seed, value in values.items():
            write_run(
                root,
                method=method,
                shots=8,
                seed=seed,
                q2a=value,
                teachers=None if method == "baseline" else TEACHERS,
            )
    write_run(root, method="baseline", shots=8, seed=4, q2a=90.0, status="failed")  # not counted
    return root


def paired_csv(out):
    with open(out / "paired.csv") as handle:
        return {(r["method"], r["split"], r["metric"]): r for r in csv.DictReader(handle)}


def test_paired_differences_to_the_baseline(paired_runs, tmp_path):
    out = tmp_path / "r"
    result = build_report(paired_runs, out=out)
    half = T_975_2 * 1.0 / 3**0.5  # d = 3, 4, 2: mean 3, s = 1
    mad = paired_csv(out)[("mad", "val", "q2a")]
    assert (mad["baseline"], mad["teachers"], mad["baseline_teachers"]) == (
        "baseline",
        "clip-b16",
        "-",
    )
    assert (mad["n_pairs"], mad["unpaired_method"], mad["unpaired_baseline"]) == ("3", "1", "1")
    assert mad["seeds"] == "0;1;2" and mad["differences"] == "3;4;2"
    assert float(mad["mean_diff"]) == 3.0 and float(mad["std_diff"]) == 1.0
    assert float(mad["t_low"]) == pytest.approx(3 - half, abs=1e-5)
    assert float(mad["t_high"]) == pytest.approx(3 + half, abs=1e-5)
    assert (float(mad["boot_low"]), float(mad["boot_high"])) == (2.0, 4.0)  # exact: see test_stats
    assert mad["t_excludes_zero"] == "True" and mad["boot_excludes_zero"] == "True"
    assert float(mad["mde"]) == pytest.approx(3.264044, abs=1e-6)
    assert mad["seeds_for_half_width_3"] == "3"
    md = paired_csv(out)[("md", "val", "q2a")]
    assert float(md["mean_diff"]) == pytest.approx(2 / 3)
    assert float(md["t_low"]) < 0 < float(md["t_high"]) and md["t_excludes_zero"] == "False"
    assert (md["unpaired_method"], md["unpaired_baseline"]) == ("0", "1")
    qa2r = paired_csv(out)[("mad", "val", "qa2r")]  # the metric is paired too
    assert float(qa2r["mean_diff"]) == 1.5
    assert ("baseline", "val", "q2a") not in paired_csv(out)
    markdown = result["markdown"]
    table = markdown.split("### vcr: q2a, paired difference to baseline")[1].split("###")[0]
    assert "| student | method | teachers | val k8 |" in table
    mad_cell = f"+3.00 [{3 - half:+.2f}, {3 + half:+.2f}] * (n=3, 2 unpaired)"
    assert mad_cell == "+3.00 [+0.52, +5.48] * (n=3, 2 unpaired)"
    # then its power (test_stats checks the numbers): s = 1 at n = 3 gives MDE 3.264 (nct), and
    # +-3 needs n = 3 (t_{0.975, 2} / sqrt(3) = 2.48 <= 3 < t_{0.975, 1} / sqrt(2) = 8.98)
    assert f"| s1 | mad | clip-b16 | {mad_cell}; MDE 3.26, ±3 needs n=3 |" in table
    # md: d = -1, 2, 1, s = sqrt(7/3) = 1.5275: MDE 3.264 * 1.5275 = 4.99; n = 4 gives
    # 3.182 * 1.5275 / 2 = 2.43 <= 3 < 4.303 * 1.5275 / sqrt(3) = 3.79
    assert "| s1 | md | clip-b16 | +0.67 [" in table
    assert "] (n=3, 1 unpaired); MDE 4.99, ±3 needs n=4 |" in table
    assert "| s1 | baseline |" not in table
    std = statistics.stdev(PAIRED["mad"].values())
    assert f"| s1 | mad | clip-b16 | 38.00 ± {std:.2f} (n=4) |" in markdown  # mean ± std stays
    assert (out / "vcr-val-q2a-paired.png").read_bytes()[:4] == b"\x89PNG"
    assert out / "paired.csv" in result["files"]


def test_report_csv_has_the_interval_of_each_mean(paired_runs, tmp_path):
    build_report(paired_runs, out=tmp_path / "r", plots=False)
    with open(tmp_path / "r" / "report.csv") as handle:
        cells = {(c["method"], c["split"], c["metric"]): c for c in csv.DictReader(handle)}
    md = cells[("md", "val", "q2a")]  # 29, 34, 32: mean 31.67, s = 2.5166
    half = T_975_2 * statistics.stdev([29, 34, 32]) / 3**0.5
    assert float(md["ci_low"]) == pytest.approx(95 / 3 - half, abs=1e-5)
    assert float(md["ci_high"]) == pytest.approx(95 / 3 + half, abs=1e-5)


def test_a_seed_without_a_usable_pair_is_left_out():
    cell = Cell([1.0, 2.0, 3.0, 4.0], ["a", "b", "c", "d"], [0, 0, 1, None])
    assert cell.by_seed() == ({1: 3.0}, 3)  # a repeated seed and no seed


def test_no_baseline_omits_the_paired_section(runs, tmp_path):
    for run in (runs / "vcr" / "s1" / "baseline").rglob("metrics.json"):
        run.unlink()
    result = build_report(runs, out=tmp_path / "r")
    notes = [line for line in result["markdown"].splitlines() if "paired" in line.lower()]
    assert notes == ["Paired differences to `baseline`: omitted, no complete `baseline` runs."]
    assert paired_csv(tmp_path / "r") == {}
    assert not list((tmp_path / "r").glob("*-paired.png"))


def test_baseline_option_pairs_with_another_method(paired_runs, tmp_path):
    from madcache.cli import cli

    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli, ["report", str(paired_runs), "--out", str(out), "--baseline", "md", "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    assert "### vcr: q2a, paired difference to md" in result.output
    pairs = paired_csv(out)
    mad = pairs[("mad", "val", "q2a")]  # d = 4, 2, 1 over seeds 0, 1, 2
    assert (mad["baseline"], mad["differences"]) == ("md", "4;2;1")
    assert float(mad["mean_diff"]) == pytest.approx(7 / 3)
    assert pairs[("baseline", "val", "q2a")]["differences"] == "1;-2;-1"
    assert ("md", "val", "q2a") not in pairs


def test_unknown_baseline_is_a_one_line_error(paired_runs, tmp_path):
    from madcache.cli import cli

    result = CliRunner().invoke(
        cli,
        ["report", str(paired_runs), "--out", str(tmp_path / "o"), "--baseline", "linear-probe"],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --baseline 'linear-probe': no complete runs of that method; methods found: "
        "baseline, md, mad"
    ]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the demo's report

DEMO_TEACHERS = {"vision": "madcache-demo", "text": "madcache-demo", "relevance": "madcache-demo"}
DEMO_POWER = {  # (method, split) -> the power text at the demo's 4 seeds (s from the per-seed
    ("md", "val"): "MDE 10.93, ±3 needs n=14",  # table: 5.136, 1.470, 10.984, 12.847;
    ("mad", "val"): "MDE 3.13, ±3 needs n=4",  # MDE = 2.12795 s, checked in test_stats)
    ("md", "val_sm"): "MDE 23.37, ±3 needs n=54",
    ("mad", "val_sm"): "MDE 27.34, ±3 needs n=73",
}


def test_the_demo_prints_the_mde_beside_each_paired_interval(demo_report, tmp_path):
    """The demo's report step (madcache.demo.run.make_report, whose Markdown `make demo` prints)
    on runs with the committed demo's per-seed Q2A: the Q2A table is the committed one, and each
    paired cell is the committed one followed by the MDE at its 4 seeds and the seeds for ±3."""
    from madcache.demo.run import DemoPaths, make_report

    paths = DemoPaths(tmp_path / "demo")
    val, sm = demo_report.per_seed["val"], demo_report.per_seed["val_sm"]
    for method in val:
        for seed, (q2a, sm_q2a) in enumerate(zip(val[method], sm[method])):
            write_run(
                paths.runs,
                method=method,
                shots=32,
                seed=seed,
                q2a=q2a,
                sm=sm_q2a,
                student="single-stream",
                teachers=None if method == "baseline" else DEMO_TEACHERS,
            )
    markdown = make_report(paths)["markdown"]

    def table(text, title):
        return [
            line
            for line in text.split(f"### {title}\n")[1].split("###")[0].splitlines()
            if line.startswith("| single-stream")
        ]

    assert table(markdown, "vcr: q2a") == table(demo_report.printed, "vcr: q2a")
    committed = table(demo_report.printed, "vcr: q2a, paired difference to baseline")
    printed = table(markdown, "vcr: q2a, paired difference to baseline")
    assert len(printed) == len(committed) == 2
    for ours, theirs in zip(printed, committed):
        method = theirs.split(" | ")[1]
        cells = theirs.strip(" |").split(" | ")
        cells[3] += f"; {DEMO_POWER[(method, 'val')]}"
        cells[4] += f"; {DEMO_POWER[(method, 'val_sm')]}"
        assert ours == "| " + " | ".join(cells) + " |"


def test_the_demo_report_says_when_its_runs_are_not_trained_to_convergence(tmp_path):
    """`make demo`'s timed recipe (a fixed step count, last weights) is named in its report,
    with where the converged comparison is; a sweep with dev early stopping gets no caveat."""
    from madcache.demo.run import DemoPaths, make_report

    paths = DemoPaths(tmp_path / "demo")
    for seed in (0, 1):
        write_run(paths.runs, method="baseline", shots=8, seed=seed, q2a=30.0 + seed, sm=20.0)
    timed = make_report(paths, train={"max_steps": 150, "select": "last"})["markdown"]
    assert "## Recipe: not trained to convergence" in timed
    assert "Every run stops after 150 task steps" in timed
    assert "madcache demo study" in timed
    converged = make_report(paths, train={"max_steps": 600, "select": "best"})["markdown"]
    assert "not trained to convergence" not in converged
