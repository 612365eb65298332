"""Debian's dcmtk command line tools (storescu, storescp, echoscu), as the demo, tests and benchmarks run them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def dcmtk(tool: str) -> str:
    """Path of a dcmtk tool. pynetdicom installs Python apps with the same names into the venv's bin directory,
    which `make` puts first on PATH: skip that directory."""
    venv_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin
    )
    return shutil.which(tool, path=path) or tool
