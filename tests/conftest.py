"""Shared fixtures: the real-data folder beside the checkout, fixed seeds, one torch thread."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("MADCACHE_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def real_root() -> Path:
    """`../shared/fixtures/real`; tests that need it skip with a reason where it is absent."""
    if not REAL.is_dir():
        pytest.skip(f"real dataset samples not found at {REAL} (only present beside the "
                    "project's own checkout; set MADCACHE_REAL_FIXTURES to point at them)")
    return REAL
