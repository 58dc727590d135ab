"""The stand-ins of test_train.py (a tiny Student, hand-built targets, `make_setup`) for the other
training tests: test modules are not importable by name under --import-mode=importlib."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_standins():
    spec = importlib.util.spec_from_file_location("train_standins",
                                                  Path(__file__).with_name("test_train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def standins():
    return load_standins()
