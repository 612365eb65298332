"""Contracts: buf lint, and no breaking change against the protos of the previous commit on main."""

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def buf() -> str:
    path = shutil.which("buf") or str(Path.home() / "go" / "bin" / "buf")
    if not Path(path).exists():
        pytest.fail("buf is not installed: run scripts/bootstrap.sh")
    return path


def test_buf_lint():
    result = subprocess.run([buf(), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_previous_commit():
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

    previous = git("rev-parse", "--verify", "--quiet", "HEAD~1").stdout.strip()
    if not previous or git("cat-file", "-e", f"{previous}:protos/buf.yaml").returncode != 0:
        pytest.skip("no previous commit with protos/ to compare against")
    result = subprocess.run(
        [buf(), "breaking", "protos", "--against", f".git#ref={previous},subdir=protos"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_not_tracked():
    tracked = subprocess.run(["git", "ls-files", "*_pb2.py", "*_pb2_grpc.py"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout.strip() == ""
