"""The training stand-ins (tests/train/standins.py: a tiny Student, hand-built targets,
`make_setup`) for the training tests, the workers and tests/faults: test directories are not
packages under --import-mode=importlib, so the module is loaded by path, once per process, and
registered as `train_standins` (test_train.py imports its names from there)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

NAME = "train_standins"


def load_standins() -> ModuleType:
    """tests/train/standins.py, loaded once per process."""
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, Path(__file__).with_name("standins.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[NAME]


load_standins()


@pytest.fixture(scope="session")
def standins() -> ModuleType:
    return load_standins()
