"""`make lint` as part of the suite: ruff and mypy stay clean."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff():
    result = subprocess.run(
        [BIN / "ruff", "check", "services", "tests", "model_repository"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_mypy():
    result = subprocess.run([BIN / "mypy", "services"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
