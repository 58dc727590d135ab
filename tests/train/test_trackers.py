"""`--report-to wandb` (offline: local run files) and `--report-to mlflow` (a local file store):
the run's scalars per step, a resumed run without forked curves, the same choices on every
command, a missing package named in one line, the report's files as artifacts. No network:
WANDB_MODE=offline, MLflow's file store. Stand-ins come from standins.py."""

from __future__ import annotations

import builtins
import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from madcache.cli import cli
from madcache.train import loop as train_mod
from madcache.train.loop import train
from madcache.train.tracking import TRACKERS


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


def wandb_history(run_dir: Path) -> list[dict]:
    """The history records of every offline run file under <run>/wandb, in the order written
    (the .wandb file is a LevelDB-style log of protobuf records: 7-byte file header, 32 KiB
    blocks, records with a 7-byte header of crc, length and kind full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, buf = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            buf = chunk if kind in (1, 2) else buf + chunk
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(buf)
                if record.WhichOneof("record_type") == "history":
                    rows.append(
                        {
                            item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item
                        }
                    )
    return rows


def logged_eventually(run_dir: Path, key: str, timeout: float = 20.0) -> dict:
    """Every key logged to the offline wandb runs under `run_dir`, once `key` is among them:
    wandb's service process writes the run file, and its last records can reach the disk a
    moment after `finish()` returns (seen once in three suite runs on a loaded machine)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        logged = {k: v for r in wandb_history(run_dir) for k, v in r.items()}
        if key in logged or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


def crash_then_resume(standins, tmp_path, monkeypatch, options):
    real = train_mod.StageLoss.forward
    calls = {"n": 0}

    def crash_at_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod.StageLoss, "forward", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(standins.make_setup(tmp_path, **options))
    monkeypatch.setattr(train_mod.StageLoss, "forward", real)
    return train(standins.make_setup(tmp_path, resume=True, **options))


def test_wandb_offline_run_files_hold_the_scalars(standins, tmp_path):
    pytest.importorskip("wandb")
    metrics = train(
        standins.make_setup(tmp_path, method="md", epochs=2, eval_every=3, report_to="wandb")
    )
    rows = wandb_history(tmp_path / "run")
    loss = [(r["_step"], r["task/loss"]) for r in rows if "task/loss" in r]
    assert [s for s, _ in loss] == list(range(1, 7))
    evals = [(h["global_step"], h["eval"]["q2a"]) for h in metrics["history"] if "eval" in h]
    logged = [(r["_step"], r["eval/val/q2a"]) for r in rows if "eval/val/q2a" in r]
    assert logged == [(s, pytest.approx(v)) for s, v in evals]
    first = [h for h in metrics["history"] if h["stage"] == "task"][0]["loss"]
    assert first == pytest.approx(sum(v for _, v in loss[:3]) / 3, rel=1e-5)


def test_wandb_resumed_run_keeps_its_id_and_does_not_fork(standins, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    crash_then_resume(
        standins,
        tmp_path,
        monkeypatch,
        dict(method="md", epochs=3, checkpoint_every=3, report_to="wandb"),
    )
    run_dir = tmp_path / "run"
    attempts = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(attempts) == 2 and len({p.name for p in attempts}) == 1  # one wandb run id
    steps = [r["_step"] for r in wandb_history(run_dir) if "task/loss" in r]
    assert steps == list(range(1, 10))  # step 4 logged once, not again after the resume


def mlflow_client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "mlflow-run.json").read_text())
    assert saved["tracking_uri"] == (run_dir / "mlruns").absolute().as_uri()
    return MlflowClient(tracking_uri=saved["tracking_uri"]), saved["run_id"]


def test_mlflow_file_store_holds_the_metrics(standins, tmp_path):
    pytest.importorskip("mlflow")
    metrics = train(
        standins.make_setup(tmp_path, method="md", epochs=2, eval_every=3, report_to="mlflow")
    )
    client, run_id = mlflow_client(tmp_path / "run")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["method"] == "md" and run.data.params["epochs"] == "2"
    loss = [(m.step, m.value) for m in client.get_metric_history(run_id, "task/loss")]
    assert [s for s, _ in loss] == list(range(1, 7))
    evals = [(h["global_step"], h["eval"]["q2a"]) for h in metrics["history"] if "eval" in h]
    logged = [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/val/q2a")]
    assert logged == [(s, pytest.approx(v)) for s, v in evals]


def test_mlflow_resumed_run_reopens_the_run_without_forks(standins, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    crash_then_resume(
        standins,
        tmp_path,
        monkeypatch,
        dict(method="md", epochs=3, checkpoint_every=3, report_to="mlflow"),
    )
    client, run_id = mlflow_client(tmp_path / "run")
    steps = [m.step for m in client.get_metric_history(run_id, "task/loss")]
    assert sorted(steps) == list(range(1, 10))
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


def test_mlflow_tracking_uri_from_the_environment(standins, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = tmp_path / "shared-store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    train(standins.make_setup(tmp_path, method="md", epochs=1, report_to="mlflow"))
    assert store.is_dir() and not (tmp_path / "run" / "mlruns").exists()


def test_the_same_choices_on_every_command():
    names = TRACKERS.names()
    assert names == ["mlflow", "none", "tensorboard", "wandb"]
    for command in ("train", "sweep", "report"):
        out = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        assert "--report-to NAME" in out and "One of: " + ", ".join(names) + "." in out, command
    result = CliRunner().invoke(cli, ["train", "--report-to", "neptune"])
    assert result.exit_code == 2 and "Invalid value for '--report-to'" in result.output


def test_a_missing_package_names_the_extra(standins, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    from madcache.core.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"^--report-to wandb needs the wandb package: "
        r"pip install 'madcache\[wandb\]'$",
    ):
        train(standins.make_setup(tmp_path, method="md", epochs=1, report_to="wandb"))


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_report_logs_its_tables_and_plots(tracker, tmp_path):
    pytest.importorskip(tracker)
    from madcache.train.tracking import open_tracker

    files = [tmp_path / "report.md", tmp_path / "report.csv", tmp_path / "plot.png"]
    files[0].write_text("# madcache report\n")
    files[1].write_text("method,q2a\nbaseline,50.0\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(1, 1)).savefig(files[2])
    plt.close("all")
    tracker_ = open_tracker(tracker, tmp_path, start_step=0)
    tracker_.artifacts(files)
    tracker_.close()
    if tracker == "mlflow":
        client, run_id = mlflow_client(tmp_path)
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"report.md", "report.csv", "plots"} <= names
    else:
        logged = logged_eventually(tmp_path, "report/report/_type")
        assert logged["report/report/_type"] == "table-file"  # report.csv as a wandb.Table
        assert logged["report/report/nrows"] == 1
        assert logged["report/plot/_type"] == "image-file"
