"""The local stack without Docker: Apache Kafka (KRaft), Neo4j Community (embedded, Bolt) and Triton.

Each component installs itself idempotently under the state directory, runs as a child process with a PID
file and a log, and counts as up only when it answers a real request.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVSTACK = REPO_ROOT / "devstack"
MODEL_REPOSITORY = Path(os.environ.get("MEDSTREAM_MODEL_REPOSITORY", REPO_ROOT / "model_repository"))
KAFKA_PORT, KAFKA_CONTROLLER_PORT = 9092, 9093
NEO4J_BOLT_PORT = 7687
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002


@dataclass(frozen=True)
class Paths:
    state: Path

    @property
    def opt(self) -> Path:
        return self.state / "opt"

    def data(self, name: str) -> Path:
        return self.state / "data" / name

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def pid(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"


def _maven(*args: str) -> None:
    subprocess.run(["mvn", "-q", "-B", "-Dstyle.color=never", *args], check=True, stdout=subprocess.DEVNULL)


def lib_glob(lib: Path) -> str:
    return f"{lib}/*"


def _stamp_matches(stamp: Path, content: str) -> bool:
    return stamp.exists() and stamp.read_text() == content


class Component(ABC):
    name: str
    marker: str  # a string of the command line that identifies this component's process
    ready_timeout_s: float = 120.0

    def install(self, paths: Paths) -> None:  # noqa: B027  (optional hook: most components need nothing)
        """Fetch or build what the component needs; a no-op when already done."""

    def prepare(self, paths: Paths) -> None:  # noqa: B027  (optional hook)
        """Write configuration and initialise data before each start."""

    @abstractmethod
    def command(self, paths: Paths) -> list[str]: ...

    def env(self, paths: Paths) -> dict[str, str]:
        return dict(os.environ)

    @abstractmethod
    def ready(self, settings: Settings) -> bool: ...

    @abstractmethod
    def describe(self) -> str: ...

    def own_log(self, paths: Paths) -> Path | None:
        """The component's own log file, where it writes more than to stdout."""
        return None


class Kafka(Component):
    name = "kafka"
    marker = "kafka.Kafka"
    version = "4.4.0"

    def lib(self, paths: Paths) -> Path:
        return paths.opt / f"kafka-{self.version}"

    def install(self, paths: Paths) -> None:
        lib = self.lib(paths)
        stamp = lib / ".complete"
        if stamp.exists():
            return
        lib.mkdir(parents=True, exist_ok=True)
        _maven(
            "-f",
            str(DEVSTACK / "kafka" / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        )
        stamp.write_text(self.version)

    def properties(self, paths: Paths) -> str:
        data = paths.data(self.name)
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data / 'logs'}",
                "num.partitions=1",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "share.coordinator.state.topic.num.partitions=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )

    def _java(self, paths: Paths) -> list[str]:
        return [
            "java",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DEVSTACK / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={paths.state / 'logs' / 'kafka'}",
            "-cp",
            lib_glob(self.lib(paths)),
        ]

    def prepare(self, paths: Paths) -> None:
        data = paths.data(self.name)
        data.mkdir(parents=True, exist_ok=True)
        props = data / "server.properties"
        props.write_text(self.properties(paths))
        if (data / "logs" / "meta.properties").exists():
            return  # formatting twice fails: the storage is already initialised
        cluster_id = subprocess.run(
            [*self._java(paths), "kafka.tools.StorageTool", "random-uuid"], check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(
            [
                *self._java(paths),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def command(self, paths: Paths) -> list[str]:
        return [
            *self._java(paths)[:1],
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            *self._java(paths)[1:],
            "kafka.Kafka",
            str(paths.data(self.name) / "server.properties"),
        ]

    def own_log(self, paths: Paths) -> Path | None:
        return paths.state / "logs" / "kafka" / "server.log"

    def ready(self, settings: Settings) -> bool:
        from services.common.kafka import kafka_ready

        return kafka_ready(settings, timeout=2.0)

    def describe(self) -> str:
        return f"Apache Kafka {self.version} (KRaft) on 127.0.0.1:{KAFKA_PORT}"


class Neo4j(Component):
    name = "neo4j"
    marker = "Neo4jLauncher"
    version = "5.26"

    def lib(self, paths: Paths) -> Path:
        return paths.opt / "neo4j-launcher"

    def install(self, paths: Paths) -> None:
        lib = self.lib(paths)
        sources = [DEVSTACK / "neo4j" / "pom.xml", *sorted((DEVSTACK / "neo4j" / "src").rglob("*.java"))]
        fingerprint = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
        stamp = lib / ".complete"
        if _stamp_matches(stamp, fingerprint):
            return
        shutil.rmtree(lib, ignore_errors=True)
        _maven("-f", str(sources[0]), "package", f"-Dlibdir={lib}")
        stamp.write_text(fingerprint)

    def command(self, paths: Paths) -> list[str]:
        return [
            "java",
            "-Xms512m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:+DisableExplicitGC",
            # Java 17 module flags for Neo4j's page cache and netty (without them it falls back, slower and noisy).
            "--add-opens=java.base/java.nio=ALL-UNNAMED",
            "--add-opens=java.base/java.io=ALL-UNNAMED",
            "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
            "--enable-native-access=ALL-UNNAMED",
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dlog4j2.disable.jmx=true",
            f"-Dneo4j.bolt.port={NEO4J_BOLT_PORT}",
            "-Dneo4j.pagecache=256m",
            "-cp",
            f"{lib_glob(self.lib(paths))}",
            "org.medstream.devstack.Neo4jLauncher",
            str(paths.data(self.name)),
        ]

    def own_log(self, paths: Paths) -> Path | None:
        return paths.data(self.name) / "logs" / "debug.log"

    def ready(self, settings: Settings) -> bool:
        from services.common.graph import Graph

        async def probe() -> bool:
            graph = Graph.connect(settings)
            try:
                return await graph.ready()
            finally:
                await graph.close()

        return asyncio.run(probe())

    def describe(self) -> str:
        return f"Neo4j {self.version} Community (embedded, Bolt) on 127.0.0.1:{NEO4J_BOLT_PORT}"


class Triton(Component):
    name = "triton"
    marker = "tritonserver"
    ready_timeout_s = 180.0

    @staticmethod
    def wheel_dir() -> Path:
        import pytriton  # from the nvidia-pytriton wheel (the `stack` extra)

        return Path(pytriton.__file__).parent / "tritonserver"

    def backends(self, paths: Paths) -> Path:
        return paths.opt / "triton-backends"

    def install(self, paths: Paths) -> None:
        python = self.backends(paths) / "python"
        python.mkdir(parents=True, exist_ok=True)
        wheel = self.wheel_dir()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        sources = [
            *sorted((wheel / "backends" / "python").glob("*.*")),
            wheel / "python_backend_stubs" / version / "triton_python_backend_stub",
        ]
        for src in sources:
            dst = python / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copy2(src, dst)
        ensure_models()

    def command(self, paths: Paths) -> list[str]:
        return [
            str(self.wheel_dir() / "bin" / "tritonserver"),
            f"--model-repository={MODEL_REPOSITORY}",
            f"--backend-directory={self.backends(paths)}",
            "--http-address=127.0.0.1",
            f"--http-port={TRITON_HTTP_PORT}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={TRITON_GRPC_PORT}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={TRITON_METRICS_PORT}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--disable-auto-complete-config",
            # A half-copied model folder must not take the server (and the other models) down.
            "--exit-on-error=false",
            # New model versions dropped into the repository are loaded without a restart.
            "--model-control-mode=poll",
            "--repository-poll-secs=5",
            "--log-verbose=0",
        ]

    def env(self, paths: Paths) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR")  # the stub links libpython of this interpreter
        wheel_libs = self.wheel_dir().parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH")]))
        # The stub's interpreter is isolated from PYTHONPATH; model.py adds these site dirs itself.
        env["MEDSTREAM_TRITON_SITE_PACKAGES"] = os.pathsep.join(
            p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        )
        return env

    def ready(self, settings: Settings) -> bool:
        import httpx

        base = f"http://127.0.0.1:{TRITON_HTTP_PORT}"
        try:
            for model in model_names():
                if httpx.get(f"{base}/v2/models/{model}/ready", timeout=2.0).status_code != 200:
                    return False
            return httpx.get(f"{base}/v2/health/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def describe(self) -> str:
        return f"Triton Inference Server 2.51 (pytriton wheel) on 127.0.0.1:{TRITON_GRPC_PORT} (gRPC)"


def model_names() -> list[str]:
    return sorted(p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt"))


def model_trainers() -> dict[str, Callable[[Path], object]]:
    """Every model in the repository and the function that trains it from the repo's own data."""
    from training import deterioration_risk as deterioration
    from training.cds import training as cds
    from training.drug import admet, generator, gnn
    from training.glycaemia import training as glycaemia
    from training.imaging import lung, stroke
    from training.research import adr

    return {
        deterioration.MODEL_NAME: deterioration.train,
        glycaemia.MODEL_NAME: glycaemia.train,
        cds.MODEL_NAME: cds.train,
        lung.MODEL_NAME: lung.train_for_repository,
        stroke.MODEL_NAME: stroke.train_for_repository,
        adr.MODEL_NAME: adr.train,
        gnn.MODEL_NAME: gnn.train,  # before the generator: its guidance learns this model's scores
        admet.MODEL_NAME: admet.train,
        generator.MODEL_NAME: generator.train,
    }


def ensure_models(force: bool = False) -> list[str]:
    """Train the models whose weights are missing; returns the names trained."""
    trained = []
    for name, train in model_trainers().items():
        target = MODEL_REPOSITORY / name
        if force or not any(target.glob("[0-9]*/model.pt")):
            train(target)
            trained.append(name)
    return trained


COMPONENTS: tuple[Component, ...] = (Kafka(), Neo4j(), Triton())


def component(name: str) -> Component:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise KeyError(name)


# ---------------------------------------------------------------- process control


def read_pid(paths: Paths, name: str) -> int | None:
    try:
        return int(paths.pid(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int | None, expect: str) -> bool:
    """The PID runs and is still our process (PIDs are reused after a crash)."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    # An empty cmdline is a process between fork and exec (or exiting): judge it by its state alone.
    return state != "Z" and (not cmdline.strip() or expect in cmdline)


@dataclass
class Status:
    name: str
    pid: int | None
    running: bool
    ready: bool
    note: str


def status(c: Component, paths: Paths, settings: Settings) -> Status:
    pid = read_pid(paths, c.name)
    running = alive(pid, c.marker)
    ready = c.ready(settings) if running else False
    if running:
        note = "ready" if ready else "running, not ready"
    elif pid is not None:
        note = "dead (stale PID file: crashed or killed)"
    else:
        note = "stopped"
    return Status(c.name, pid if running else None, running, ready, note)


def start(c: Component, paths: Paths, settings: Settings, on_wait: Callable[[float], None] | None = None) -> float:
    """Start the component unless it runs already; block until ready. Returns seconds until ready."""
    started = time.monotonic()
    pid = read_pid(paths, c.name)
    proc: subprocess.Popen[bytes] | None = None
    if not alive(pid, c.marker):
        c.prepare(paths)
        for d in (paths.pid(c.name).parent, paths.log(c.name).parent):
            d.mkdir(parents=True, exist_ok=True)
        with open(paths.log(c.name), "ab") as log:
            proc = subprocess.Popen(
                c.command(paths),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=c.env(paths),
                cwd=paths.state,
                start_new_session=True,
            )
        paths.pid(c.name).write_text(f"{proc.pid}\n")
        pid = proc.pid
    deadline = started + c.ready_timeout_s
    while time.monotonic() < deadline:
        exited = proc.poll() is not None if proc is not None else not alive(pid, c.marker)
        if exited:
            raise RuntimeError(f"{c.name} exited during start-up; see {paths.log(c.name)}")
        if c.ready(settings):
            return time.monotonic() - started
        if on_wait:
            on_wait(time.monotonic() - started)
        time.sleep(0.25)
    raise TimeoutError(f"{c.name} not ready after {c.ready_timeout_s:.0f}s; see {paths.log(c.name)}")


def stop(c: Component, paths: Paths, timeout_s: float = 60.0) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True when a process was stopped."""
    pid = read_pid(paths, c.name)
    if not alive(pid, c.marker):
        paths.pid(c.name).unlink(missing_ok=True)
        return False
    assert pid is not None
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(pid, c.marker):
        time.sleep(0.1)
    if alive(pid, c.marker):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    paths.pid(c.name).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
