"""Test harness: the real local stack (Kafka, Neo4j, Triton) is started once per session, by PID.

Integration tests reuse a stack that is already up (e.g. after `medstream stack up`) and stop only what
they started. A failing integration test shows the tail of every component's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from services.cli import stack
from services.common.config import Settings
from services.common.graph import Graph
from services.common.kafka import ensure_topics

T = TypeVar("T")
_STARTED: list[stack.Component] = []
_SERVICES: list[ServiceProcess] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that restart the shared servers run last, so the others see one steady stack.
    items.sort(key=lambda item: 1 if item.get_closest_marker("restarts_stack") else 0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "restarts_stack: stops and starts shared servers (runs last)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A test killed by its timeout skips its fixtures' teardown: no service process may outlive the session.
    for proc in _SERVICES:
        proc.kill()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def paths(settings: Settings) -> stack.Paths:
    return stack.Paths(settings.state_dir)


@pytest.fixture(scope="session")
def local_stack(settings: Settings, paths: stack.Paths) -> Iterator[Settings]:
    for c in stack.COMPONENTS:
        c.install(paths)
        if not stack.status(c, paths, settings).ready:
            stack.start(c, paths, settings)
            _STARTED.append(c)
    ensure_topics(settings)
    yield settings
    for c in reversed(_STARTED):
        stack.stop(c, paths)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("integration"):
        paths = stack.Paths(Settings().state_dir)
        service_logs = sorted((paths.state / "logs").glob("*.log"))
        own_logs = [log for c in stack.COMPONENTS if (log := c.own_log(paths)) is not None]
        for log in [*service_logs, *own_logs]:
            report.sections.append((f"log {log}", stack.tail(log, 30)))


def wait_for(check: Callable[[], T], timeout_s: float = 60.0, interval_s: float = 0.5, what: str = "condition") -> T:
    """Poll until `check()` is truthy (no sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout_s
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value {last!r}")
        time.sleep(interval_s)
        last = check()
    return last


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class ServiceProcess:
    """A service run as `medstream run NAME` in its own process group, with its log kept for failures."""

    def __init__(self, name: str, port: int, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.port = name, port
        self.log = log_dir / f"{name}.log"
        self.env = {**os.environ, "MEDSTREAM_HTTP_PORT": str(port), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        _SERVICES.append(self)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", self.name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def ready(self) -> bool:
        return self._get("/readyz")

    def alive(self) -> bool:
        return self._get("/healthz")

    def _get(self, path: str) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@contextmanager
def running(procs: dict[str, ServiceProcess], ready_s: float = 120) -> Iterator[dict[str, ServiceProcess]]:
    """Start the services together (their warm-ups overlap), wait until each is ready, stop them all after."""
    for proc in procs.values():
        proc.start()
    try:
        for name, proc in procs.items():
            wait_for(proc.ready, ready_s, what=f"{name} /readyz")
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def graph_query(settings: Settings, query: str, **params: object) -> list[dict]:
    """Rows of a Cypher query against the local Neo4j (integration tests' view of the graph)."""

    async def go() -> list[dict]:
        graph = Graph.connect(settings)
        try:
            records, _, _ = await graph.driver.execute_query(query, params, database_=graph.database)
            return [dict(r) for r in records]
        finally:
            await graph.close()

    return asyncio.run(go())
