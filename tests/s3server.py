"""A real S3-compatible server for tests: tools/s3server (gofakes3 on a bbolt file), built by scripts/bootstrap.sh."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.config import Settings
from tests.conftest import wait_for

BINARY = Path(__file__).resolve().parents[1] / "build" / "bin" / "s3server"
BUCKET = "medstream-test"


class S3Server:
    """One server process on 127.0.0.1:`port` keeping its objects in `data_dir`; restartable on the same data."""

    def __init__(self, port: int, data_dir: Path, bucket: str = BUCKET) -> None:
        if not os.access(BINARY, os.X_OK):
            pytest.fail(f"{BINARY} is missing: run scripts/bootstrap.sh (make setup)", pytrace=False)
        self.port, self.data_dir, self.bucket = port, data_dir, bucket
        self.log = data_dir.parent / f"s3server-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, **changes: object) -> Settings:
        values: dict[str, object] = {
            "blob_store": "s3",
            "s3_bucket": self.bucket,
            "s3_endpoint_url": self.endpoint_url,
            "s3_access_key_id": "medstream-test",
            "s3_secret_access_key": SecretStr("medstream-test-secret"),
            "s3_timeout_s": 2.0,
        }
        return Settings(**{**values, **changes})  # type: ignore[arg-type]

    def start(self) -> S3Server:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BINARY), "-addr", f"127.0.0.1:{self.port}", "-data", str(self.data_dir), "-bucket", self.bucket],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._listening, 20, what=f"s3server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"s3server exited: {self.log.read_text()[-2000:]}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False
