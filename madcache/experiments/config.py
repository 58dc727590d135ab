"""The settings of `madcache sweep` (how a pipeline's grid is run; the grid is the pipeline file)
and `madcache report` (their flags are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from madcache.core.config import setting
from madcache.core.progress import PROGRESS_HELP
from madcache.experiments.executors import EXECUTORS

REPORT_TO_HELP = (
    "tensorboard (<run>/tensorboard/), wandb (<run>/wandb/) or mlflow "
    "(MLFLOW_TRACKING_URI, else <run>/mlruns)"
)


@dataclass(frozen=True, kw_only=True)
class SweepRunConfig:
    """How `madcache sweep` runs the missing runs of a pipeline."""

    jobs: int | None = setting(
        None,
        minimum=1,
        short="j",
        help="Runs at once (processes). Default 1, or one per GPU slot with --gpus.",
    )
    gpus: str | None = setting(
        None,
        metavar="IDS",
        help="GPUs to place runs on, e.g. 0,1,2,3: each job gets one GPU "
        "slot (CUDA_VISIBLE_DEVICES) and device cuda.",
    )
    jobs_per_gpu: int = setting(1, minimum=1, help="Small jobs sharing one GPU (slots per GPU).")
    report_to: str | None = setting(
        None,
        names="tracker",
        help="Also log each training run's scalars to a tracker: " + REPORT_TO_HELP + ".",
    )
    dry_run: bool = setting(False, help="List the runs and their state; run nothing.")
    only: str | None = setting(
        None,
        metavar="REGEX",
        help="Only runs whose name (dataset/student/method/k<K>/seed<S>) matches.",
    )
    overrides: list[str] = setting(
        factory=list,
        flag="set",
        metavar="KEY=VALUE",
        help="NAME=VALUE fills ${NAME} placeholders; other keys "
        "override settings (e.g. seeds=[0,1], train.epochs=2).",
    )
    executor: Literal[EXECUTORS] = setting(
        "local",
        help="local: processes here; slurm: one "
        "job-array task per run (submitit), "
        "resources from [slurm] or the "
        "--slurm-* flags.",
    )
    slurm_partition: str | None = setting(None, help="Slurm partition [slurm.partition].")
    slurm_gpus: int | None = setting(None, minimum=0, help="GPUs per run [slurm.gpus_per_node, 1].")
    slurm_cpus: int | None = setting(None, minimum=1, help="CPUs per run [slurm.cpus_per_task, 8].")
    slurm_time: int | None = setting(
        None, minimum=1, help="Minutes per run before requeue [slurm.time_min, 240]."
    )
    slurm_account: str | None = setting(None, help="Slurm account [slurm.account].")
    slurm_qos: str | None = setting(None, help="Slurm QOS [slurm.qos].")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def slurm_overrides(self) -> dict[str, Any]:
        """The `[slurm]` keys the flags set (None: the pipeline's value, or the default)."""
        return {
            "partition": self.slurm_partition,
            "gpus_per_node": self.slurm_gpus,
            "cpus_per_task": self.slurm_cpus,
            "time_min": self.slurm_time,
            "account": self.slurm_account,
            "qos": self.slurm_qos,
        }

    def gpu_ids(self) -> list[str] | None:
        return self.gpus.split(",") if self.gpus else None


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """What `madcache report` writes besides the tables it prints."""

    out: str | None = setting(
        None,
        help="The folder to write report.md / report.csv / "
        "paired.csv / runs.csv / plots into (default: "
        "RUNS_DIR); never inside a dataset root of the runs.",
    )
    # a method of the runs found (they may come from a plugin not installed here), so not a
    # registry choice: an unknown one is refused naming the methods found
    baseline: str | None = setting(
        None,
        metavar="METHOD",
        help="The method every other one is paired with, seed by "
        "seed (default: baseline; when given, it must have "
        "complete runs).",
    )
    plots: bool = setting(True, help="Write the PNG plots.")
    report_to: str = setting(
        "none",
        names="tracker",
        help="Also log the tables (report.md, the CSVs) and plots as "
        "artifacts of a new run of this tracker, opened in the --out "
        "folder: " + REPORT_TO_HELP + ".",
    )
