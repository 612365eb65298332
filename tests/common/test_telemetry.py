import io
import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from services.common.telemetry import (
    JsonFormatter,
    child_traceparent,
    health_app,
    new_traceparent,
    scrub_text,
    traceparent_from_headers,
)

pytestmark = pytest.mark.unit


def log_line(msg: str, *args: object, **extra: object) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger(f"phi-test-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning(msg, *args, extra=extra)
    return json.loads(stream.getvalue())


def test_phi_fields_are_pseudonymised_and_stable_within_a_process():
    a = log_line("scored", patient_id="MRN-0012345", birth_date="1961-04-02", patient_name="Doe^Jane")
    b = log_line("scored", patient_id="MRN-0012345")
    raw = json.dumps(a)
    assert "0012345" not in raw and "1961" not in raw and "Doe" not in raw
    assert a["patient_id"].startswith("pseud:") and a["patient_id"] == b["patient_id"]


@pytest.mark.parametrize(
    "text, secret",
    [
        ("patient Doe^Jane^^^ arrived", "Doe"),
        ("born 1961-04-02", "1961-04-02"),
        ("DICOM birth date 19610402", "19610402"),
        ("MRN 004512339 on ward", "004512339"),
        ("call +44 20 7946 0958", "7946"),
        ("mail jane.doe@example.org", "jane.doe"),
        ("subject Patient/abc-123 updated", "abc-123"),
    ],
)
def test_free_text_identifiers_are_redacted(text, secret):
    assert secret not in scrub_text(text)
    assert secret not in log_line(text)["msg"]
    assert secret not in log_line("failed: %s", text)["msg"]


def test_exception_text_is_scrubbed():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("phi-exc")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError("bad birthDate 1961-04-02 for Doe^Jane")
    except ValueError:
        logger.exception("validation failed")
    line = stream.getvalue()
    assert "1961-04-02" not in line and "Doe^Jane" not in line


def test_counts_and_codes_survive_scrubbing():
    line = log_line("batch done", topic="medstream.findings.v1", partition=2, offset=1234, reason="DECODE_ERROR")
    assert line["partition"] == 2 and line["offset"] == 1234 and line["reason"] == "DECODE_ERROR"


@given(st.text())
def test_scrub_never_raises(text):
    scrub_text(text)


def test_traceparent_child_keeps_trace_and_makes_new_span():
    parent = new_traceparent()
    child = child_traceparent(parent)
    assert child.split("-")[1] == parent.split("-")[1] and child.split("-")[2] != parent.split("-")[2]
    assert len(child_traceparent("garbage").split("-")[1]) == 32
    assert traceparent_from_headers([("traceparent", parent.encode())]) == parent
    assert traceparent_from_headers({"other": b"x"}) is None


async def test_health_endpoints():
    async def ok() -> bool:
        return True

    async def broken() -> bool:
        raise ConnectionError

    async with TestClient(TestServer(health_app({"a": ok}))) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert "medstream_consumed_total" in metrics
    async with TestClient(TestServer(health_app({"a": ok, "b": broken}))) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503 and (await resp.json())["checks"] == {"a": True, "b": False}
