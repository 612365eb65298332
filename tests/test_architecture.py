"""The import contract (serving never imports model building, evaluation or benchmarks) and what it buys: serving
workers that start without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(LINT_IMPORTS), "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_repository_keeps_its_import_contracts():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_serving_module_that_imports_training_breaks_the_contract(tmp_path):
    # A copy of the tree with one deliberate violation: the deterioration worker importing a training module.
    for name in ("services", "training", "benchmarks", "pyproject.toml"):
        source = ROOT / name
        if source.is_dir():
            subprocess.run(["cp", "-r", str(source), str(tmp_path / name)], check=True)
        else:
            (tmp_path / name).write_text(source.read_text())
    worker = tmp_path / "services" / "deterioration" / "assess.py"
    worker.write_text(worker.read_text() + "\nfrom training.deterioration_risk import synthetic_vitals  # noqa\n")
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "services.deterioration.assess -> training.deterioration_risk" in result.stdout


SERVING_WORKERS = [
    "services.deterioration.app",
    "services.wearables.app",
    "services.imaging.app",
    "services.imaging_gateway.app",
    "services.imaging_dispatcher.app",
    "services.fhir_gateway.app",
    "services.wearables_gateway.app",
    "services.graph_writer.app",
    "services.research.trials.app",
    "services.research.adr.app",
    "services.drug.screening.app",
    "services.drug.generation.app",
    # decision support runs torch for its note embeddings, loaded when the worker warms up, not at import
    "services.cds.app",
    "services.cds.hooks",
]


@pytest.mark.parametrize("module", SERVING_WORKERS)
def test_serving_workers_import_without_torch_and_without_io(module):
    """Importing a worker (and building it, for the faust ones) loads no torch and opens no connection: settings
    point at closed ports, so any I/O at import would hang or fail."""
    code = textwrap.dedent(f"""
        import sys, importlib
        m = importlib.import_module({module!r})
        if hasattr(m, "build"):
            from services.common.config import Settings
            m.build(Settings(kafka_bootstrap_servers="127.0.0.1:9", triton_grpc_url="127.0.0.1:9",
                             neo4j_uri="bolt://127.0.0.1:9", state_dir=sys.argv[1]))
        heavy = sorted(n for n in ("torch", "training", "benchmarks", "sentence_transformers") if n in sys.modules)
        assert not heavy, heavy
    """)
    import tempfile

    with tempfile.TemporaryDirectory() as state:
        result = subprocess.run([sys.executable, "-c", code, state], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
