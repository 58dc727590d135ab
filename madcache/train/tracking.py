"""Experiment tracking (`--report-to`): scalars of a run as it trains, for watching it live.

metrics.json stays the source of truth; a tracker only mirrors it. Tags are `<stage>/<name>` per
step (loss terms, lr, CW firing rate, gradient norm, data wait) and `eval/<split>/<metric>`; the
step axis is the global optimizer step. Trackers (docs/training.md, "Tracking"):

- `tensorboard`: event files in `<run>/tensorboard/`; a resumed run purges the events after its
  checkpoint, so the curves do not fork.
- `wandb`: `wandb.init(dir=<run>)` (files in `<run>/wandb/`; `WANDB_MODE=offline` logs locally);
  a resumed run reopens the same wandb run (its id is kept in `<run>/wandb/madcache.json`) and
  logs only steps after the last one logged, so the curves do not fork.
- `mlflow`: an MLflow run in `MLFLOW_TRACKING_URI`, else the local file store `<run>/mlruns`;
  a resumed run reopens the same MLflow run (`<run>/mlflow-run.json`) and skips the steps its
  metric history already holds.

`madcache report --report-to` gives a tracker the report's files (`artifacts`).
Adding a tracker = a class with `scalars`, `artifacts` and `close`, and one `TRACKERS.register`
line.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from madcache.core.errors import ConfigError
from madcache.core.registry import Registry

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # wandb.init(dir=<run>) writes <run>/wandb/
WANDB_STATE = "madcache.json"  # in WANDB_DIR: the wandb run id and the last step logged
MLFLOW_DIR = "mlruns"  # the default (file) store
MLFLOW_RUN = "mlflow-run.json"  # the MLflow run id and its tracking URI
EXPERIMENT = "madcache"  # wandb project / MLflow experiment unless the env names one


class Tracker(Protocol):
    def scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def artifacts(self, paths: Sequence[Path]) -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """`--report-to none`: metrics.json only."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def artifacts(self, paths: Sequence[Path]) -> None:
        pass

    def close(self) -> None:
        pass


def _missing(name: str, extra: str) -> ConfigError:
    return ConfigError(
        f"--report-to {name} needs the {extra} package: pip install 'madcache[{extra}]'"
    )


def _run_name(run_dir: Path) -> str:
    return Path(os.path.abspath(run_dir)).name


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved settings (config.json, written before the tracker opens), if any."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


class TensorBoardTracker:
    """`torch.utils.tensorboard` event files in `<run>/tensorboard/`."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        """`start_step`: the global step of the checkpoint a resumed run starts from; events
        logged after it by the interrupted run are purged (they are logged again)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(
            log_dir=str(run_dir / TENSORBOARD_DIR),
            purge_step=start_step + 1 if start_step else None,
        )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def artifacts(self, paths: Sequence[Path]) -> None:
        """Markdown and CSV files as text, PNG plots as images."""
        import matplotlib.image

        for path in paths:
            if path.suffix in (".md", ".csv"):
                text = path.read_text()
                self.writer.add_text(
                    path.name,
                    text if path.suffix == ".md" else "    " + text.replace("\n", "\n    "),
                )
            elif path.suffix == ".png":
                self.writer.add_image(
                    path.stem, matplotlib.image.imread(str(path))[..., :3], dataformats="HWC"
                )

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A wandb run with its files in `<run>/wandb/` (`WANDB_MODE=offline`: nothing leaves the
    machine; `wandb sync <run>/wandb/offline-run-*` uploads later)."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        """`start_step` > 0 (a resumed run): reopen the wandb run of this run directory
        (`resume="allow"`, same id) and log only steps after the last one it logged."""
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self.state_file = run_dir / WANDB_DIR / WANDB_STATE
        state = {}
        if start_step and self.state_file.is_file():
            try:
                state = json.loads(self.state_file.read_text())
            except ValueError:
                state = {}
        run_id = state.get("run_id") or uuid.uuid4().hex[:8]
        self.last_step = int(state.get("last_step", 0)) if start_step else 0
        self.logged_through = self.last_step  # by an interrupted attempt: skipped
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                project=os.environ.get("WANDB_PROJECT", EXPERIMENT),
                name=_run_name(run_dir),
                config=_run_config(run_dir),
                reinit="create_new",
            )
        except Exception as exc:  # wandb raises its own types (login, network, settings)
            raise ConfigError(
                f"--report-to wandb: wandb could not start a run "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "run `wandb login`, or set WANDB_MODE=offline to log into "
                f"{run_dir / WANDB_DIR} only"
            ) from None
        self.run_id = run_id
        self._save_state()

    def _save_state(self) -> None:
        self.state_file.write_text(
            json.dumps({"run_id": self.run_id, "last_step": self.last_step}) + "\n"
        )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        # wandb's step only grows: a resumed run's steps up to the last logged one were logged
        # by the interrupted attempt (with the same values: resumed == fresh), so they are
        # skipped, not logged twice.
        if step <= self.logged_through or step < self.run.step:
            return
        self.run.log(dict(values), step=step)
        self.last_step = max(self.last_step, step)

    def artifacts(self, paths: Sequence[Path]) -> None:
        """CSV tables as `wandb.Table`s, PNG plots as images, and every file in one artifact
        of type `report`."""
        import csv

        import wandb

        logged: dict[str, Any] = {}
        for path in paths:
            if path.suffix == ".csv":
                with open(path, newline="") as f:
                    rows = list(csv.reader(f))
                if rows:
                    logged[f"report/{path.stem}"] = wandb.Table(columns=rows[0], data=rows[1:])
            elif path.suffix == ".png":
                logged[f"report/{path.stem}"] = wandb.Image(str(path))
        if logged:
            self.run.log(logged)
        artifact = wandb.Artifact(f"report-{self.run_id}", type="report")
        for path in paths:
            artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self._save_state()
        self.run.finish()


class MlflowTracker:
    """An MLflow run (mlflow-skinny): `MLFLOW_TRACKING_URI` when set, else the local file store
    `file:<run>/mlruns` (no server)."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        """`start_step` > 0 (a resumed run): reopen this run directory's MLflow run and skip
        the steps its metric history already holds."""
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (run_dir / MLFLOW_DIR).absolute().as_uri()
            # MLflow 3 keeps the file store but asks for an opt-in; a run folder needs no DB.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.id_file = run_dir / MLFLOW_RUN
        saved = {}
        if start_step and self.id_file.is_file():
            try:
                saved = json.loads(self.id_file.read_text())
            except ValueError:
                saved = {}
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.logged_through = 0
            if saved.get("run_id") and saved.get("tracking_uri") == uri:
                self.run_id = saved["run_id"]
                run = self.client.get_run(self.run_id)
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged_through = max(
                    (
                        m.step
                        for key in run.data.metrics
                        for m in self.client.get_metric_history(self.run_id, key)
                    ),
                    default=0,
                )
            else:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
                experiment = self.client.get_experiment_by_name(name)
                experiment_id = (
                    experiment.experiment_id
                    if experiment is not None
                    else self.client.create_experiment(name)
                )
                self.run_id = self.client.create_run(
                    experiment_id, run_name=_run_name(run_dir)
                ).info.run_id
                params = {
                    k: json.dumps(v) if not isinstance(v, str) else v
                    for k, v in _run_config(run_dir).items()
                }
                for key, value in params.items():
                    self.client.log_param(self.run_id, key, value[:6000])
        except Exception as exc:  # MLflow raises MlflowException, OSError, requests errors
            raise ConfigError(
                f"--report-to mlflow: cannot open an MLflow run in {uri} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                "; check MLFLOW_TRACKING_URI"
            ) from None
        self.id_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri}) + "\n")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(key, float(value), now, step) for key, value in values.items()],
        )

    def artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.client.log_artifact(
                self.run_id, str(path), artifact_path="plots" if path.suffix == ".png" else None
            )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TrackerFactory = Callable[..., Tracker]
TRACKERS: Registry[TrackerFactory] = Registry("tracker", group="madcache.trackers")
TRACKERS.register("none", lambda run_dir, *, start_step: NoTracker())
TRACKERS.register("tensorboard", TensorBoardTracker)
TRACKERS.register("wandb", WandbTracker)
TRACKERS.register("mlflow", MlflowTracker)


# the module each tracker imports and the extra that installs it (`madcache[<extra>]`)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def check_tracker(name: str) -> None:
    """Before any work: `name` is a registered tracker whose package is installed (else one
    line naming the extra to install)."""
    TRACKERS.get(name)
    if name in TRACKER_PACKAGES:
        import importlib.util

        module, extra = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise _missing(name, extra)


def open_tracker(name: str, run_dir: Path, *, start_step: int) -> Tracker:
    """The registered tracker `name` for `run_dir`, continuing from `start_step`."""
    return TRACKERS.get(name)(Path(run_dir), start_step=start_step)
