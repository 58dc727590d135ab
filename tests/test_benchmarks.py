"""benchmarks/gpu_check.sh in its dry mode (tiny shapes on the CPU): every part of the GPU check
still runs, so the script cannot rot between the runs on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_dry():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pytest -m gpu" not in done.stdout
    for row in ("extract / teacher forward", "image tower alone", "JPEG decode+resize",
                "cached MAD / baseline step, bf16", "MAD step fp32 / bf16", "peak GPU memory"):
        assert row in done.stdout, row
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["dry"] and figures["extraction"]["examples"] == 8
    assert figures["steps"]["mad_over_baseline_bf16"] > 0
