"""The command line under hostile input (issue 12 items 4 and 5): every case ends in one line
naming the file/line/key/option and exit code 2, or, for a bug, one line saying so and exit 1
(the traceback only with --debug); no command writes over its inputs or into a dataset root."""

from __future__ import annotations

import json
import shutil

import pytest

from madcache.core.errors import DataError, OutputLocationError
from madcache.core.io import check_output_location


@pytest.fixture
def snli(tmp_path, faults, snli_root):
    """A private copy of the 12-image SNLI-VE split (the tests damage it)."""
    root = tmp_path / "snli"
    shutil.copytree(snli_root, root)
    return root


def stats(faults, root, *extra):
    return faults.invoke(
        "data", "stats", "--dataset", "snli-ve", "--root", root, "--split", "train", *extra
    )


# ----------------------------------------------------------------------------- bugs and --debug


def test_an_internal_error_is_one_line_and_exit_1_unless_debug(monkeypatch, faults):
    import madcache.experiments.report as report

    monkeypatch.setattr(report, "build_report", lambda *a, **k: {}["missing"])
    line = faults.one_line_error(faults.invoke("report", "."), code=1)
    assert line == (
        "Error: internal error: KeyError: 'missing' — this is a bug, please report "
        "it (rerun with --debug for the traceback)"
    )
    debug = faults.invoke("--debug", "report", ".")
    assert debug.exit_code == 1 and isinstance(debug.exception, KeyError)


# ----------------------------------------------------------------------------- annotations


@pytest.mark.parametrize(
    "bad,problem",
    [(b'{"pairID": "caf\xe9"}', "not UTF-8: byte 0xe9"), (b"[" * 100_000, "nested too deeply")],
)
def test_a_bad_annotation_line_names_file_and_line_and_skip_bad_skips_it(
    snli, bad, problem, faults
):
    path = snli / "snli_ve_train.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([*lines[:2], bad, *lines[2:]]) + b"\n")
    line = faults.one_line_error(stats(faults, snli))
    assert f"{path}:3: {problem}" in line
    skipped = stats(faults, snli, "--skip-bad", "--json")
    assert skipped.exit_code == 0, skipped.output
    result = json.loads(skipped.output)
    assert result["examples"] == len(lines)
    assert [(s["line"], problem in s["reason"]) for s in result["skipped"]] == [(3, True)]


def test_a_deeply_nested_json_file_names_the_file(tmp_path):
    from madcache.data.lowshot import load_split

    path = tmp_path / "split.json"
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(DataError, match=f"{path}: nested too deeply"):
        load_split(path)


def test_a_cache_manifest_nested_too_deeply_is_one_line(tmp_path, faults):
    root = tmp_path / "cache"
    faults.write_world(root, faults.make_world(), fmt="zarr")
    (root / "manifest.json").write_bytes(b'{"a":' * 50_000)
    line = faults.one_line_error(faults.invoke("cache", "info", root))
    assert "manifest.json: not valid JSON" in line


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    "text,expected",
    [
        (b"[train]\nlr = = 1\n", "not valid TOML (Invalid value (at line 2, column 6))"),
        (b'[train]\nlr = "fast"\n', "train.lr: expected a number, got 'fast'"),
        (b'[train]\nmethod = "caf\xe9"\n', ":2: not UTF-8 (byte 0xe9)"),
        (b"[train]\nseed = [1]\n", "train.seed: expected an integer, got [1]"),
    ],
)
def test_a_bad_training_toml_names_the_key_or_line(tmp_path, text, expected, faults):
    path = tmp_path / "t.toml"
    path.write_bytes(text)
    line = faults.one_line_error(
        faults.invoke(
            "train",
            "--config",
            path,
            "--dataset",
            "vcr",
            "--root",
            tmp_path,
            "--out",
            tmp_path / "run",
        )
    )
    assert f"{path}" in line and expected in line


@pytest.mark.parametrize(
    "option,expected",
    [
        ("seeds", "--set: expected KEY=VALUE, got 'seeds'"),
        ("seeds=[0,", "--set seeds=[0,: not valid JSON"),
        ("seeds=3", "seeds: expected a list, got 3"),
        ("train.lr=-1", "train.lr: must be > 0, got -1"),
    ],
)
def test_a_malformed_set_value_is_one_line(tmp_path, option, expected, faults):
    path = tmp_path / "p.toml"
    path.write_text(
        f'dataset = "vcr"\nroot = "{tmp_path}"\nout = "{tmp_path / "runs"}"\n'
        'methods = ["baseline"]\nseeds = [0]\n'
    )
    line = faults.one_line_error(faults.invoke("sweep", path, "--dry-run", "--set", option))
    assert expected in line


def test_a_train_value_that_does_not_suit_a_method_is_refused_when_the_sweep_loads(
    tmp_path, faults
):
    path = tmp_path / "p.toml"
    path.write_text(
        f'dataset = "vcr"\nroot = "{tmp_path}"\nout = "{tmp_path / "runs"}"\n'
        f'methods = ["baseline", "mad"]\nseeds = [0]\ncache = "{tmp_path}/c"\n'
        "[train]\nm = 0\n"
    )
    line = faults.one_line_error(faults.invoke("sweep", path, "--dry-run"))
    assert "[train] for method mad: m: method 'mad' selects m words per text" in line


# ----------------------------------------------------------------------------- worker processes


def test_a_worker_process_failure_is_the_workers_one_line(tmp_path, snli, tiny_clip, faults):
    """A broken image decoded in a DataLoader worker: the worker's message, without its
    traceback (the DataLoader re-raises errors wrapped in it)."""
    image = snli / "images" / "1003.jpg"
    image.write_bytes(b"not a jpeg")
    args = faults.extract_args(snli, tmp_path / "cache", tiny_clip, "--workers", "1")
    line = faults.one_line_error(faults.invoke(*args))
    assert f"{image}: image cannot be decoded" in line


# ----------------------------------------------------------------------------- output locations


def test_check_output_location_cases(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    (root / "ann").mkdir(parents=True)
    (root / "ann" / "val.jsonl").write_text("{}\n")
    check_output_location(tmp_path / "runs" / "a", roots=[root], inputs=[cache])
    refused = [
        (cache, {}),
        (cache / "run", {}),
        (tmp_path, {}),
        (root / "x", {}),
        (root / "ann" / "val.jsonl", {"inside_root_ok": True}),
        (root, {}),
    ]
    for out, options in refused:
        with pytest.raises(OutputLocationError):
            check_output_location(out, roots=[root], inputs=[cache], **options)
    check_output_location(root / "ann" / "val_sm.jsonl", roots=[root], inside_root_ok=True)


def test_commands_refuse_to_write_into_a_dataset_root_or_over_an_input(
    tmp_path, snli, tiny_clip, faults
):
    inside = snli / "out"
    cases = {
        "extract": faults.extract_args(snli, inside, tiny_clip),
        "regions": [
            "regions",
            "--dataset",
            "snli-ve",
            "--root",
            snli,
            "--split",
            "train",
            "--out",
            inside,
        ],
        "train": ["train", "--dataset", "snli-ve", "--root", snli, "--out", inside],
        "lowshot": [
            "data",
            "lowshot",
            "--dataset",
            "snli-ve",
            "--root",
            snli,
            "--split",
            "train",
            "--per-category",
            1,
            "--seed",
            0,
            "--out",
            inside / "s.json",
        ],
        "demo teacher": ["demo", "teacher", "--data", snli, "--out", inside / "t.safetensors"],
    }
    for name, args in cases.items():
        line = faults.one_line_error(faults.invoke(*args))
        assert f"{inside}" in line and "is inside the dataset root" in line, name
        assert not inside.exists(), name
    cache = tmp_path / "cache"
    cache.mkdir()
    line = faults.one_line_error(
        faults.invoke(
            "train",
            "--dataset",
            "snli-ve",
            "--root",
            snli,
            "--cache",
            cache,
            "--out",
            cache,
            "--method",
            "md",
        )
    )
    assert f"--out {cache} would overwrite the input {cache}" in line


def test_data_commands_write_into_a_root_only_when_asked_and_never_over_its_files(
    tmp_path, snli, faults
):
    lowshot = [
        "data",
        "lowshot",
        "--dataset",
        "snli-ve",
        "--root",
        snli,
        "--split",
        "train",
        "--per-category",
        1,
        "--seed",
        0,
        "--into-root",
        "--out",
    ]
    assert faults.invoke(*lowshot, snli / "k1.json").exit_code == 0
    before = (snli / "snli_ve_train.jsonl").read_bytes()
    line = faults.one_line_error(faults.invoke(*lowshot, snli / "snli_ve_train.jsonl"))
    assert "would overwrite a file of the dataset root" in line
    vcr = tmp_path / "vcr"
    vcr.mkdir()
    (vcr / "val.jsonl").write_text("{}\n")
    line = faults.one_line_error(
        faults.invoke("data", "sm", "--root", vcr, "--split", "val", "--out", vcr, "--into-root")
    )
    assert f"would overwrite the input {vcr / 'val.jsonl'}" in line
    assert (snli / "snli_ve_train.jsonl").read_bytes() == before
    assert (vcr / "val.jsonl").read_text() == "{}\n"


def test_predict_refuses_to_overwrite_a_run_file(tmp_path, snli, faults):
    from madcache.train.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(dataset="snli-ve", root=str(snli), out=str(run)).to_dict()
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "config.json").read_bytes()
    line = faults.one_line_error(
        faults.invoke(
            "predict", "--run", run, "--split", "train", "--out", run / "config.json", "--force"
        )
    )
    assert "would overwrite the input" in line and (run / "config.json").read_bytes() == before


def test_a_sweep_job_process_reports_one_line(tmp_path, capsys):
    """A sweep's job process (`python -m madcache.experiments.sweep JOB.json`) ends a refused
    run with one line, which the sweep's failure summary quotes from its log."""
    from madcache.experiments.sweep import main

    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "kind": "train",
                "evals": [],
                "config": {
                    "dataset": "vcr",
                    "root": str(tmp_path),
                    "out": str(tmp_path / "run"),
                    "lr": -1,
                },
            }
        )
    )
    assert main([str(job)]) == 2
    assert capsys.readouterr().err == "error: train.lr: must be > 0, got -1.0\n"


def test_truncated_teacher_weights_are_one_line_naming_the_file(tmp_path, snli, tiny_clip, faults):
    name, checkpoint = tiny_clip
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(checkpoint.read_bytes()[:300])
    line = faults.one_line_error(
        faults.invoke(*faults.extract_args(snli, tmp_path / "cache", (name, broken)))
    )
    assert f"{broken}: teacher weights file is corrupt or truncated" in line
