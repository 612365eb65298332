"""`make lint` as part of the suite: ruff (lint and format) and mypy stay clean. The import contracts are checked
by tests/test_architecture.py."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CODE = ["services", "training", "tests", "model_repository"]


def test_ruff():
    result = subprocess.run([BIN / "ruff", "check", *CODE], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format():
    result = subprocess.run([BIN / "ruff", "format", "--check", *CODE], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mypy():
    result = subprocess.run([BIN / "mypy", "services", "training"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
