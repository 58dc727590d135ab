"""Sweeps: grid expansion and naming, config validation, skip/resume with an injected runner,
split files made once per (k, seed), and one real job through `python -m madcache.experiments.sweep`."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

from madcache.core.errors import ConfigError
from madcache.data.lowshot import Split
from madcache.experiments.grid import job_payload, plan
from madcache.experiments.pipeline import load_sweep
from madcache.experiments.runners import execute, in_process_runner, run_state, subprocess_runner
from madcache.experiments.sweep import run_sweep
from madcache.train.config import TrainConfig

PIPELINE = """
dataset = "vcr"
root = "${ROOT}"
cache = "caches/train"
eval_caches = { val = "caches/val" }
regions = "regions"
out = "runs"
methods = ["baseline", "md", "mad"]
shots = [2, 8]
seeds = [0, 1, 2, 3]
eval = ["val", "val_sm"]

[vars]
ROOT = "world"

[train]
epochs = 3
"""


def top(text, lines):
    """`text` with top-level `lines` added (before the first table)."""
    return text.replace("\n[vars]", "\n" + lines + "\n[vars]", 1)


def write(tmp_path, text=PIPELINE, name="p.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


class FakeRunner:
    """Writes config.json and a complete metrics.json (every eval) for each run, as a real run
    does; records the calls."""

    def __init__(self, fail_on: int | None = None, interrupt_on: int | None = None):
        self.calls: list[str] = []
        self.payloads: list[dict] = []
        self.fail_on, self.interrupt_on = fail_on, interrupt_on
        self.lock = threading.Lock()

    def __call__(self, spec, payload):
        with self.lock:
            self.calls.append(spec.name)
            self.payloads.append(payload)
            n = len(self.calls)
        if n == self.interrupt_on:
            raise KeyboardInterrupt
        if n == self.fail_on:
            spec.run_dir.mkdir(parents=True, exist_ok=True)  # a killed run: no metrics.json
            raise RuntimeError("boom")
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        if spec.kind == "train":
            resolved = TrainConfig.from_dict(payload["config"]).to_dict()
            (spec.run_dir / "config.json").write_text(json.dumps(resolved))
        metrics = {
            "status": "complete",
            "method": spec.method,
            "seed": spec.seed,
            "eval": {e: {"q2a": 50.0} for e in spec.evals},
        }
        (spec.run_dir / "metrics.json").write_text(json.dumps(metrics))


def fake_splits(calls):
    def make(k, seed):
        calls.append((k, seed))
        return Split(
            dataset="vcr",
            source_split="train",
            params={"per_category": k, "seed": seed},
            ids=[f"q{seed}-{i}:qa" for i in range(k)],
            counts={"x": k},
            example_counts={"x": k},
        )

    return make


def test_grid_expansion_and_names(tmp_path):
    config = load_sweep(write(tmp_path))
    specs = plan(config)
    assert len(specs) == 3 * 2 * 4
    assert [s.name for s in specs[:5]] == [
        "vcr/single-stream/baseline/k2/seed0",
        "vcr/single-stream/baseline/k2/seed1",
        "vcr/single-stream/baseline/k2/seed2",
        "vcr/single-stream/baseline/k2/seed3",
        "vcr/single-stream/baseline/k8/seed0",
    ]
    assert specs[-1].name == "vcr/single-stream/mad/k8/seed3"
    assert specs[-1].run_dir == tmp_path / "runs" / "vcr/single-stream/mad/k8/seed3"
    assert all(s.evals == ("val", "val_sm") for s in specs)
    assert plan(config) == specs  # deterministic
    assert specs[0].teacher is None and specs[-1].teacher.cache == str(tmp_path / "caches/train")
    assert config.root == str(tmp_path / "world")  # relative to the file


def test_grid_with_students_teachers_full_and_adapters(tmp_path):
    text = PIPELINE.replace('cache = "caches/train"\neval_caches = { val = "caches/val" }\n', "")
    text = text.replace(
        'methods = ["baseline", "md", "mad"]',
        'methods = ["baseline", "mad", "adapter-mlp3"]\n'
        'students = ["single-stream", {name = "single-stream", label = "big",'
        " options = {layers = 4}}]",
    )
    text = text.replace("shots = [2, 8]", 'shots = [2, "full"]').replace("[0, 1, 2, 3]", "[0, 1]")
    text += (
        '\n[[teachers]]\nname = "clip"\ncache = "c1"\neval_caches = { val = "c1v" }\n'
        '[[teachers]]\nname = "vit"\ncache = "c2"\neval_caches = { val = "c2v" }\n'
    )
    specs = plan(load_sweep(write(tmp_path, text)))
    names = [s.name for s in specs]
    # baseline: 2 students x 2 shots x 2 seeds; mad: x 2 teachers; adapter: once, 2 teachers
    assert len(names) == 8 + 16 + 8
    assert "vcr/big/mad/vit/full/seed1" in names and "vcr/big/baseline/k2/seed0" in names
    assert "vcr/frozen-teacher/adapter-mlp3/clip/k2/seed0" in names
    adapter = next(s for s in specs if s.method == "adapter-mlp3")
    assert adapter.evals == ("val",)  # no val_sm cache -> not evaluated
    big = next(s for s in specs if s.name == "vcr/big/mad/vit/full/seed1")
    payload = job_payload(load_sweep(write(tmp_path, text)), big)
    assert payload["config"]["student_options"] == {"layers": 4}
    assert payload["config"]["split_file"] is None and payload["config"]["per_category"] is None


def test_train_payload_is_a_valid_training_config(tmp_path):
    from madcache.train.config import TrainConfig

    config = load_sweep(write(tmp_path))
    spec = plan(config)[-1]
    payload = job_payload(config, spec)
    train = TrainConfig.from_dict(payload["config"])
    assert (train.method, train.seed, train.per_category, train.epochs) == ("mad", 3, 8, 3)
    assert train.split_file == str(tmp_path / "runs/splits/vcr-k8-seed3.json")
    assert train.eval_split == "val" and train.resume and train.out == str(spec.run_dir)
    assert payload["evals"] == ["val", "val_sm"]


def test_rerun_does_no_work_and_splits_are_made_once(tmp_path):
    config = load_sweep(write(tmp_path))
    runner, made = FakeRunner(), []
    first = run_sweep(config, runner=runner, make_split=fake_splits(made), progress=False)
    assert len(first.ran) == 24 and not first.failed and not first.skipped
    assert sorted(made) == [(k, s) for k in (2, 8) for s in range(4)]  # once per (k, seed)
    splits = {
        (p["config"]["method"], p["config"]["per_category"], p["config"]["seed"]): p["config"][
            "split_file"
        ]
        for p in runner.payloads
    }
    assert splits[("baseline", 2, 1)] == splits[("md", 2, 1)] == splits[("mad", 2, 1)]
    assert Split.load(splits[("mad", 8, 3)]).ids[0] == "q3-0:qa"
    again = run_sweep(config, runner=FakeRunner(), make_split=fake_splits(made), progress=False)
    assert not again.ran and len(again.skipped) == 24 and len(made) == 8


def test_a_finished_run_of_another_sweep_is_refused_not_counted(tmp_path):
    """Two sweeps with other settings over one runs folder: the second may not report the
    first's runs as its own (issue 31.7)."""
    from madcache.core.errors import RunDirectoryError

    config = load_sweep(write(tmp_path))
    run_sweep(config, runner=FakeRunner(), make_split=fake_splits([]), progress=False)
    other = dataclasses.replace(config, train={**config.train, "lr": 0.5})
    with pytest.raises(
        RunDirectoryError,
        match="holds a run trained with other settings "
        r"\(lr: run .*, now 0.5\)",
    ):
        run_sweep(other, runner=FakeRunner(), make_split=fake_splits([]), progress=False)


def test_a_failed_run_is_the_only_one_rerun(tmp_path):
    config = load_sweep(write(tmp_path))
    first = run_sweep(
        config, runner=FakeRunner(fail_on=3), make_split=fake_splits([]), progress=False
    )
    assert len(first.ran) == 23 and [s.name for s, _ in first.failed] == [
        "vcr/single-stream/baseline/k2/seed2"
    ]
    assert "boom" in first.failed[0][1]
    runner = FakeRunner()
    run_sweep(config, runner=runner, make_split=fake_splits([]), progress=False)
    assert runner.calls == ["vcr/single-stream/baseline/k2/seed2"]


def test_an_interrupted_sweep_completes_only_the_missing_runs(tmp_path):
    config = load_sweep(write(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            config, runner=FakeRunner(interrupt_on=3), make_split=fake_splits([]), progress=False
        )
    runner = FakeRunner()
    result = run_sweep(config, runner=runner, make_split=fake_splits([]), progress=False)
    assert len(result.skipped) == 2 and len(runner.calls) == 22
    assert runner.calls[0] == "vcr/single-stream/baseline/k2/seed2"


def test_incomplete_metrics_and_missing_evals_are_redone(tmp_path):
    config = load_sweep(write(tmp_path))
    run_sweep(config, runner=FakeRunner(), make_split=fake_splits([]), progress=False)
    specs = plan(config)
    killed, unevaluated = specs[5], specs[9]
    (killed.run_dir / "metrics.json").write_text(json.dumps({"status": "running"}))
    (unevaluated.run_dir / "metrics.json").write_text(
        json.dumps({"status": "complete", "eval": {"val": {"q2a": 1.0}}})
    )
    assert (run_state(killed), run_state(unevaluated)) == ("todo", "evaluate")
    runner = FakeRunner()
    dry = run_sweep(config, runner=runner, dry_run=True, progress=False)
    assert not runner.calls and len(dry.skipped) == 22
    run_sweep(config, runner=runner, make_split=fake_splits([]), progress=False)
    assert runner.calls == [killed.name, unevaluated.name]


def test_parallel_jobs_and_only(tmp_path):
    config = load_sweep(write(tmp_path))
    runner = FakeRunner()
    result = run_sweep(
        config, runner=runner, jobs=3, only=r"/mad/k8/", progress=False, make_split=fake_splits([])
    )
    assert sorted(runner.calls) == [f"vcr/single-stream/mad/k8/seed{s}" for s in range(4)]
    assert len(result.planned) == 4 and len(result.ran) == 4


def test_unknown_keys_raise_naming_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"p.toml: unknown key 'sedes'"):
        load_sweep(write(tmp_path, PIPELINE.replace("seeds =", "sedes =")))
    with pytest.raises(ConfigError, match=r"p.toml: unknown key 'train.epocs'"):
        load_sweep(write(tmp_path, PIPELINE.replace("epochs = 3", "epocs = 3")))
    with pytest.raises(ConfigError, match=r"'train.seed' is set by the sweep"):
        load_sweep(write(tmp_path, PIPELINE + "seed = 4\n"))
    with pytest.raises(ConfigError, match=r"unknown method 'mda'.*Available: adapter-linear"):
        load_sweep(write(tmp_path, PIPELINE.replace('"mad"]', '"mda"]')))
    with pytest.raises(ConfigError, match=r"shots are per-category k >= 1 or \"full\""):
        load_sweep(write(tmp_path, PIPELINE.replace("[2, 8]", "[0]")))
    with pytest.raises(
        ConfigError,
        match=r"eval 'val_sm': .*\(SM\) is not defined for "
        r"dataset 'snli-ve' \(datasets with SM: vcr",
    ):
        load_sweep(write(tmp_path, PIPELINE.replace('"vcr"', '"snli-ve"')))


def test_bad_values_are_refused_at_load_naming_file_and_key(tmp_path):
    """[train] / [adapter] values are checked against TrainConfig / AdapterConfig when the sweep
    loads, not inside each run."""
    for old, new, message in [
        ("epochs = 3", 'lr = "fast"', "p.toml: train.lr: expected a number, got 'fast'"),
        ("epochs = 3", "resume_every = 2", "p.toml: unknown key 'train.resume_every'"),
        ("epochs = 3", "batch_size = 0", "p.toml: train.batch_size: must be >= 1, got 0"),
        (
            "epochs = 3",
            'epochs = 3\n[adapter]\nepochs = "3"',
            "p.toml: adapter.epochs: expected an integer, got '3'",
        ),
        ("seeds = [0, 1, 2, 3]", "seeds = 0", "p.toml: seeds: expected a list, got 0"),
        ("[2, 8]", "8", "p.toml: shots: expected a list, got 8"),
        ('eval = ["val", "val_sm"]', 'eval = "val"', "p.toml: eval: expected a list, got 'val'"),
        (
            "eval = [",
            'zero_shot = "yes"\neval = [',
            "p.toml: zero_shot: expected true or false, got 'yes'",
        ),
        ('{ val = "caches/val" }', "{ val = 3 }", "p.toml: eval_caches.val: expected a string"),
        (
            "eval = [",
            'students = [{ name = "single-stream", options = 3 }]\neval = [',
            r"p.toml: students\[0\].options: expected a table, got 3",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_sweep(write(tmp_path, PIPELINE.replace(old, new, 1)))


def test_bad_set_values_name_the_option(tmp_path):
    path = write(tmp_path)
    with pytest.raises(ConfigError, match=r"^--set train.lr: expected a number, got 'fast'$"):
        load_sweep(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"^--set seeds\[1\]: expected an integer, got 'a'$"):
        load_sweep(path, ['seeds=[0, "a"]'])
    with pytest.raises(ConfigError, match=r"^--set seeds=\[0,1: not valid JSON"):
        load_sweep(path, ["seeds=[0,1"])
    with pytest.raises(ConfigError, match=r"^--set: expected KEY=VALUE, got 'seeds'$"):
        load_sweep(path, ["seeds"])
    from click.testing import CliRunner

    from madcache.cli import cli

    result = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run", "--set", "train.lr=fast"])
    assert result.exit_code == 2
    assert result.output == "Error: --set train.lr: expected a number, got 'fast'\n"


def test_placeholders_and_overrides(tmp_path, monkeypatch):
    text = PIPELINE.replace('[vars]\nROOT = "world"\n', "")
    with pytest.raises(ConfigError, match=r"\$\{ROOT\} is not set: pass --set ROOT=VALUE"):
        load_sweep(write(tmp_path, text))
    monkeypatch.setenv("ROOT", "/data/env")
    assert load_sweep(write(tmp_path, text)).root == "/data/env"
    config = load_sweep(
        write(tmp_path, text), ["ROOT=/data/vcr", "seeds=[7]", "train.epochs=9", "zero_shot=true"]
    )
    assert (config.root, config.seeds, config.train, config.zero_shot) == (
        "/data/vcr",
        [7],
        {"epochs": 9},
        True,
    )


def test_methods_needing_a_teacher_need_a_cache(tmp_path):
    text = PIPELINE.replace('cache = "caches/train"\neval_caches = { val = "caches/val" }\n', "")
    with pytest.raises(ConfigError, match="methods md, mad need a teacher cache"):
        load_sweep(write(tmp_path, text))
    text = top(PIPELINE.replace('eval_caches = { val = "caches/val" }\n', ""), "zero_shot = true")
    with pytest.raises(ConfigError, match="zero_shot need.*eval_caches"):
        load_sweep(write(tmp_path, text))


def test_cli_dry_run_lists_runs_and_states(tmp_path):
    from click.testing import CliRunner

    from madcache.cli import cli

    path = write(tmp_path)
    run_sweep(
        load_sweep(path),
        runner=FakeRunner(),
        only="/md/k2/",
        make_split=fake_splits([]),
        progress=False,
    )
    result = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run", "--set", "seeds=[0]"])
    assert result.exit_code == 0, result.output
    assert "     todo  vcr/single-stream/baseline/k2/seed0" in result.output
    assert " complete  vcr/single-stream/md/k2/seed0" in result.output
    assert "6 runs: 1 complete already, 0 ran, 0 failed" in result.output
    bad = CliRunner().invoke(
        cli, ["sweep", str(write(tmp_path, PIPELINE + "x = 1\n")), "--dry-run"]
    )
    assert bad.exit_code == 2 and "unknown key 'train.x'" in bad.output


# ----------------------------------------------------------------------------- real jobs


def toy_vcr_cache(path, n_questions, split, seed):
    """Hand-built features where the right choice's text has +1 on feature 0."""
    from madcache.cache.writer import CacheWriter

    rng = np.random.default_rng(seed)
    n = 2 * n_questions
    labels = rng.integers(0, 4, n)
    text = rng.normal(scale=0.3, size=(n, 4, 6))
    text[:, :, 0] -= 1.0
    text[np.arange(n), labels, 0] += 2.0
    logits = text[:, :, 0] + rng.normal(scale=1.5, size=(n, 4))
    arrays = {
        "example_id": np.array(
            [f"q{i // 2}:{'qa' if i % 2 == 0 else 'qar'}" for i in range(n)], dtype=str
        ),
        "image_id": np.array([f"i{i}" for i in range(n)], dtype=str),
        "image_feat": rng.normal(size=(n, 8)).astype(np.float16),
        "text_key": np.array([f"t{i}" for i in range(4 * n)], dtype=str),
        "text_eos": text.reshape(4 * n, 6).astype(np.float16),
        "example_image": np.arange(n, dtype=np.int64),
        "example_texts": np.arange(4 * n, dtype=np.int64).reshape(n, 4),
        "logits/ia": logits.astype(np.float32),
    }
    manifest = {
        "fingerprint": {"dataset": {"name": "vcr", "split": split}},
        "dataset": "vcr",
        "split": split,
        "num_choices": 4,
        "dims": {"image": 8, "text": 6},
        "settings": {},
        "teachers": {"vision": "toy", "text": "toy"},
        "num_shards": 1,
    }
    writer = CacheWriter.open(path, manifest=manifest, format="hdf5")
    writer.write_shard(
        0,
        arrays,
        index_columns={
            "category": ["activity" if (i // 2) % 2 else "mental" for i in range(n)],
            "label": labels.tolist(),
            "group": [f"q{i // 2}" for i in range(n)],
        },
    )
    writer.finish()
    return path


def adapter_sweep(tmp_path):
    toy_vcr_cache(tmp_path / "caches/train", 40, "train", 0)
    toy_vcr_cache(tmp_path / "caches/val", 30, "val", 1)
    text = (
        PIPELINE.replace('["baseline", "md", "mad"]', '["adapter-linear"]')
        .replace("[0, 1, 2, 3]", "[0, 1]")
        .replace('["val", "val_sm"]', '["val"]')
        .replace("[train]\nepochs = 3", "[adapter]\nepochs = 30")
    )
    text = top(text, "zero_shot = true")
    return load_sweep(write(tmp_path, text))


def index_splits(cache_path):
    from madcache.cache.reader import open_cache
    from madcache.data.lowshot import sample_per_category
    from madcache.evaluation.cached import index_examples

    examples = index_examples(open_cache(cache_path), "vcr")
    return lambda k, seed: sample_per_category(examples, k=k, seed=seed)


def test_adapter_sweep_in_process_with_zero_shot(tmp_path):
    config = adapter_sweep(tmp_path)
    result = run_sweep(
        config,
        runner=in_process_runner,
        progress=False,
        make_split=index_splits(tmp_path / "caches/train"),
    )
    assert len(result.ran) == 4 and not result.failed
    zero = json.loads(result.zero_shot[0].read_text())
    assert zero["protocols"]["ia"]["overall"]["q2a"] > 25
    metrics = json.loads(
        (tmp_path / "runs/vcr/frozen-teacher/adapter-linear/k8/seed1/metrics.json").read_text()
    )
    assert metrics["status"] == "complete" and metrics["eval"]["val"]["q2a"] > 70
    assert metrics["provenance"]["split_file"].endswith("splits/vcr-k8-seed1.json")
    assert len(Split.load(metrics["provenance"]["split_file"]).ids) == 2 * 2 * 8


@pytest.mark.slow
def test_one_job_as_a_subprocess(tmp_path):
    config = adapter_sweep(tmp_path)
    spec = plan(config)[0]
    from madcache.experiments.sweep import ensure_splits

    ensure_splits(config, [spec], index_splits(tmp_path / "caches/train"))
    subprocess_runner(spec, job_payload(config, spec))
    assert json.loads((spec.run_dir / "metrics.json").read_text())["status"] == "complete"
    assert (spec.run_dir / "sweep-job.json").is_file() and (spec.run_dir / "sweep.log").is_file()
    execute(job_payload(config, spec))  # complete: nothing to do, no error


def test_a_forked_run_keeps_the_subprocess_contract(tmp_path):
    """forked_runner (the default without GPUs): job file, log, a fresh process per run, its
    exit code; the same adapter job as test_one_job_as_a_subprocess, then a job that fails."""
    from madcache.experiments.runners import RunFailed, forked_runner
    from madcache.experiments.sweep import ensure_splits

    config = adapter_sweep(tmp_path)
    spec = plan(config)[0]
    ensure_splits(config, [spec], index_splits(tmp_path / "caches/train"))
    forked_runner(spec, {**job_payload(config, spec), "threads": 1})
    assert json.loads((spec.run_dir / "metrics.json").read_text())["status"] == "complete"
    assert (spec.run_dir / "sweep-job.json").is_file()

    broken = {**job_payload(config, spec), "env": {"TQDM_DISABLE": "1"}}
    broken["config"] = {**broken["config"], "cache": str(tmp_path / "no-such-cache")}
    broken["config"]["out"] = str(tmp_path / "other-run")
    failing = dataclasses.replace(spec, run_dir=tmp_path / "other-run")
    with pytest.raises(RunFailed, match="exit code 2; see .*sweep.log: error: .*no-such-cache"):
        forked_runner(failing, broken)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_tiny_demo_sweep_and_report(tmp_path):
    """Demo world -> random demo teacher -> caches + regions -> sweep (baseline, MAD, adapter,
    zero-shot, val + SM) -> rerun does nothing -> report."""
    import open_clip
    import torch
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from madcache.cli import cli
    from madcache.experiments.report import build_report
    from madcache.teachers import load_teacher

    def invoke(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    invoke("demo", "data", "--out", tmp_path / "world", "--size", "small", "--no-progress")
    load_teacher("madcache-demo", random_init=True)  # registers the shipped config
    torch.manual_seed(3)
    model = open_clip.create_model("madcache-demo").eval()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "teacher.safetensors"),
    )
    root = tmp_path / "world" / "vcr"
    for split in ("train", "val"):
        invoke(
            "extract",
            "--teacher",
            "madcache-demo",
            "--checkpoint",
            tmp_path / "teacher.safetensors",
            "--dataset",
            "vcr",
            "--root",
            root,
            "--split",
            split,
            "--out",
            tmp_path / "cache" / f"vcr-{split}",
            "--format",
            "hdf5",
            "--no-progress",
        )
    invoke(
        "regions",
        "--dataset",
        "vcr",
        "--root",
        root,
        "--split",
        "train,val",
        "--out",
        tmp_path / "regions",
        "--no-progress",
    )
    (tmp_path / "p.toml").write_text(
        'dataset = "vcr"\nroot = "world/vcr"\nregions = "regions"\ncache = "cache/vcr-train"\n'
        'eval_caches = { val = "cache/vcr-val" }\nout = "runs"\n'
        'methods = ["baseline", "md", "mad", "adapter-linear"]\nshots = [2]\nseeds = [0]\n'
        'eval = ["val", "val_sm"]\nzero_shot = true\n'
        "[train]\nmax_steps = 2\nbatch_size = 8\naf_epochs = 1\n[adapter]\nepochs = 5\n"
    )
    config = load_sweep(tmp_path / "p.toml")
    result = run_sweep(config, runner=in_process_runner, progress=False)
    assert len(result.ran) == 4 and not result.failed, result.failed
    mad = json.loads((tmp_path / "runs/vcr/single-stream/mad/k2/seed0/metrics.json").read_text())
    assert mad["status"] == "complete" and set(mad["eval"]) == {"val", "val_sm"}
    # af_epochs in [train] gives an AF stage to mad only (the paper's baseline and MD have none):
    # one epoch over the 120 label-free Q->A examples of the 240 (QA->R holds the right answer),
    # batch 8
    stages = {}
    for method in ("baseline", "md", "mad"):
        run = tmp_path / f"runs/vcr/single-stream/{method}/k2/seed0"
        stages[method] = [
            (h["stage"], h["step"])
            for h in json.loads((run / "metrics.json").read_text())["history"]
        ]
    assert stages == {
        "baseline": [("task", 2)],
        "md": [("task", 2)],
        "mad": [("af", 15), ("task", 2)],
    }
    assert set(mad["cw_fired"]) == {"task"}
    assert mad["provenance"]["split_file"] == str(tmp_path / "runs/splits/vcr-k2-seed0.json")
    baseline = json.loads(
        (tmp_path / "runs/vcr/single-stream/baseline/k2/seed0/metrics.json").read_text()
    )
    assert baseline["provenance"]["split_digest"] == mad["provenance"]["split_digest"]
    assert not run_sweep(config, runner=in_process_runner, progress=False).ran
    report = build_report(tmp_path / "runs", plots=False)
    assert "| single-stream | mad | madcache-demo |" in report["markdown"]
    assert "### vcr: CW fired (% of training instances)" in report["markdown"]
    assert "## Zero-shot: vcr val" in report["markdown"]
    # the baseline ran without a teacher cache (teachers "-"), and MAD still pairs with it
    pairing = report["pairs"][("vcr", "single-stream", "mad", "madcache-demo", "val", "k2", "q2a")]
    assert pairing.baseline_teachers == "-" and pairing.difference.seeds == (0,)
    assert pairing.difference.differences[0] == pytest.approx(
        mad["eval"]["val"]["q2a"] - baseline["eval"]["val"]["q2a"]
    )


# ----------------------------------------------------------------------------- GPU slots


class SlotRecorder(FakeRunner):
    """Records each job's GPU (CUDA_VISIBLE_DEVICES of its payload) and how many jobs share a
    GPU at once; each job lasts long enough for the others to start."""

    def __init__(self):
        super().__init__()
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.gpus: dict[str, str] = {}

    def __call__(self, spec, payload):
        gpu = payload["env"]["CUDA_VISIBLE_DEVICES"]
        with self.lock:
            self.gpus[spec.name] = gpu
            self.running[gpu] = self.running.get(gpu, 0) + 1
            self.most[gpu] = max(self.most.get(gpu, 0), self.running[gpu])
        import time

        time.sleep(0.05)
        with self.lock:
            self.running[gpu] -= 1
        super().__call__(spec, payload)


def test_gpu_slots_place_runs_on_gpus_without_stacking_them(tmp_path):
    config = load_sweep(write(tmp_path))  # 3 methods x 2 shots x 4 seeds
    runner = SlotRecorder()
    result = run_sweep(
        config,
        runner=runner,
        jobs=None,
        gpus=["0", "1", "2", "3"],
        jobs_per_gpu=2,
        make_split=fake_splits([]),
        progress=False,
        report_to="tensorboard",
    )
    assert len(result.ran) == 24 and not result.failed
    assert set(runner.gpus.values()) == {"0", "1", "2", "3"}
    assert max(runner.most.values()) <= 2 and sum(runner.most.values()) > 4
    assert all(p["config"]["device"] == "cuda" for p in runner.payloads)
    assert all(p["config"]["report_to"] == "tensorboard" for p in runner.payloads)
    assert all(p["threads"] >= 1 for p in runner.payloads)


def test_gpu_slots_round_robin_and_bad_requests():
    from madcache.experiments.sweep import gpu_slots

    assert gpu_slots(["0", "1"], 2) == ["0", "1", "0", "1"]
    with pytest.raises(ConfigError, match="distinct GPU ids"):
        gpu_slots(["0", "0"], 1)
    with pytest.raises(ConfigError, match="--jobs-per-gpu must be >= 1"):
        gpu_slots(["0"], 0)


def test_gpu_slot_requests_are_checked_before_running(tmp_path):
    config = load_sweep(write(tmp_path))
    with pytest.raises(ConfigError, match="--jobs 5 is more than the 4 GPU slot"):
        run_sweep(
            config,
            runner=FakeRunner(),
            jobs=5,
            gpus=["0", "1"],
            jobs_per_gpu=2,
            make_split=fake_splits([]),
            progress=False,
        )
    cpu = load_sweep(write(tmp_path, PIPELINE + 'device = "cpu"\n', name="cpu.toml"))
    with pytest.raises(ConfigError, match="train.device is 'cpu'"):
        run_sweep(cpu, runner=FakeRunner(), gpus=["0"], make_split=fake_splits([]), progress=False)


def test_a_subprocess_job_sees_only_its_gpu(tmp_path, monkeypatch):
    """The real runner hands the slot to the job's process environment."""
    seen = {}

    class FakePopen:
        def __init__(self, command, stdout, stderr, env):
            seen.update(env)

        def wait(self):
            return 0

    monkeypatch.setattr("madcache.experiments.runners.subprocess.Popen", FakePopen)
    config = load_sweep(write(tmp_path))
    spec = plan(config)[0]
    subprocess_runner(spec, {**job_payload(config, spec), "env": {"CUDA_VISIBLE_DEVICES": "3"}})
    assert seen["CUDA_VISIBLE_DEVICES"] == "3" and seen["TQDM_DISABLE"] == "1"


def test_cli_passes_gpus_jobs_per_gpu_and_report_to(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from madcache.cli import cli
    from madcache.experiments import sweep as sweep_mod

    seen = {}

    def fake(config, **kwargs):
        seen.update(kwargs)
        return sweep_mod.SweepResult(planned=[])

    monkeypatch.setattr(sweep_mod, "run_sweep", fake)
    result = CliRunner().invoke(
        cli,
        [
            "sweep",
            str(write(tmp_path)),
            "--gpus",
            "0,1,2,3",
            "--jobs-per-gpu",
            "2",
            "--report-to",
            "tensorboard",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (seen["gpus"], seen["jobs_per_gpu"], seen["jobs"], seen["report_to"]) == (
        ["0", "1", "2", "3"],
        2,
        None,
        "tensorboard",
    )


def test_object_store_locations_are_kept_as_urls(tmp_path):
    """s3:// caches and region stores are not paths relative to the pipeline file."""
    text = (
        PIPELINE.replace('cache = "caches/train"', 'cache = "s3://bkt/caches/train"')
        .replace('{ val = "caches/val" }', '{ val = "s3://bkt/caches/val" }')
        .replace('regions = "regions"', 'regions = "s3://bkt/regions"')
    )
    config = load_sweep(write(tmp_path, text))
    assert config.teachers[0].cache == "s3://bkt/caches/train"
    assert config.teachers[0].eval_caches == {"val": "s3://bkt/caches/val"}
    assert config.regions == "s3://bkt/regions"


def test_sweep_progress_is_plain_lines_in_a_batch_log(tmp_path, monkeypatch, capsys):
    """Without a TTY (a Slurm log, nohup) the sweep's progress is one plain line per N runs."""
    monkeypatch.setenv("MADCACHE_PROGRESS_EVERY", "6")
    config = load_sweep(write(tmp_path))  # 3 methods x 2 shots x 4 seeds
    result = run_sweep(config, runner=FakeRunner(), make_split=fake_splits([]), progress=True)
    assert len(result.ran) == 24
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sweep: ")]
    assert [line.split(",")[0] for line in lines] == [
        f"sweep: {n}/24 runs ({100 * n // 24}%)" for n in (6, 12, 18, 24)
    ]
    assert all("runs/s" in line and "ETA" in line for line in lines)
