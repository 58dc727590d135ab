"""`clip-finetune` in a sweep: a student of the grid with `--method baseline` (no teacher cache
needed), trained and evaluated on the split whose zero-shot numbers the same checkpoint has; a
grid that would distil it into itself is refused when the sweep is loaded, in one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from madcache.core.errors import ConfigError
from madcache.evaluation.zeroshot import run_zero_shot
from madcache.experiments.pipeline import load_sweep
from madcache.experiments.runners import in_process_runner
from madcache.experiments.sweep import run_sweep
from madcache.extraction import ExtractConfig, extract

HELPERS = Path(__file__).parents[1] / "extraction" / "conftest.py"


def sweep_file(tmp_path: Path, root: Path, methods: str) -> Path:
    spec = importlib.util.spec_from_file_location("extraction_conftest", str(HELPERS))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    config, checkpoint = helpers.save_tiny_clip(tmp_path / "clip")
    path = tmp_path / "p.toml"
    path.write_text(
        f'dataset = "vcr"\nroot = "{root}"\neval_caches = {{ val = "cache/val" }}\n'
        'out = "runs"\n'
        f'methods = {methods}\nshots = [1]\nseeds = [0]\neval = ["val"]\n'
        f'students = [{{name = "clip-finetune", options = {{model = "{config}", '
        f'checkpoint = "{checkpoint}"}}}}]\n'
        "[train]\nmax_steps = 2\nbatch_size = 4\nlr = 1e-4\n"
    )
    return path


def test_a_sweep_trains_it_with_baseline_beside_its_zero_shot(demo_root, tmp_path):
    root = demo_root / "vcr"
    path = sweep_file(tmp_path, root, '["baseline"]')
    config, checkpoint = (
        tmp_path / "clip" / "madcache-extract-tiny.json",
        next((tmp_path / "clip").glob("*.safetensors")),
    )
    extract(
        ExtractConfig(
            dataset="vcr",
            root=root,
            split="val",
            teacher=f"openclip-config:{config}",
            checkpoint=checkpoint,
            out=tmp_path / "cache" / "val",
            progress=False,
        )
    )

    result = run_sweep(load_sweep(path), runner=in_process_runner, progress=False)
    assert len(result.ran) == 1 and not result.failed, result.failed
    run = tmp_path / "runs/vcr/clip-finetune/baseline/k1/seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and set(metrics["eval"]["val"]) >= {"q2a", "qa2r"}
    assert json.loads((run / "student" / "student.json").read_text())["student"] == "clip-finetune"
    zero = run_zero_shot(tmp_path / "cache" / "val")["protocols"]["iqa"]["overall"]
    # two small steps from the zero-shot weights: the same 72 val examples scored, near the
    # zero-shot numbers (exact equality at step 0 is tests/students/test_clip_finetune.py's)
    assert zero["n"] == 36
    assert abs(metrics["eval"]["val"]["q2a"] - zero["q2a"]) <= 25


def test_a_sweep_that_would_distil_it_into_itself_is_refused(demo_root, tmp_path):
    path = sweep_file(tmp_path, demo_root / "vcr", '["baseline", "mad"]')
    with pytest.raises(ConfigError, match="distilling a model into itself is refused"):
        load_sweep(path)
