"""Metrics, health endpoints, PHI-free JSON logs and W3C trace context in Kafka headers."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import logging.config
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# ---------------------------------------------------------------- metrics
# Labels never carry identifiers: service, topic, reason code, model name are the only dimensions.
CONSUMED = Counter("medstream_consumed_total", "Records consumed", ["service", "topic"])
PRODUCED = Counter("medstream_produced_total", "Records produced", ["service", "topic"])
DEAD_LETTERED = Counter(
    "medstream_dead_lettered_total", "Records sent to the dead-letter topic", ["service", "topic", "reason"]
)
PROCESSING_SECONDS = Histogram(
    "medstream_processing_seconds",
    "Time to process one record",
    ["service", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INFERENCE_SECONDS = Histogram(
    "medstream_inference_seconds",
    "Triton request latency seen by the client",
    ["service", "model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "medstream_consumer_lag", "High watermark minus committed position", ["service", "topic", "partition"]
)
GRAPH_ROWS = Counter("medstream_graph_rows_total", "Rows upserted into Neo4j", ["service", "kind"])


def record_lag(service: str, topic: str, partition: int, highwater: int, position: int) -> None:
    CONSUMER_LAG.labels(service, topic, str(partition)).set(max(0, highwater - position))


# ---------------------------------------------------------------- PHI-free logs
# Keys whose values are PHI or identifiers: replaced by a keyed pseudonym so lines stay correlatable.
PHI_KEYS = frozenset(
    {
        "patient_id",
        "patient_reference",
        "patient_name",
        "name",
        "given",
        "family",
        "birth_date",
        "birthdate",
        "dob",
        "mrn",
        "identifier",
        "accession_number",
        "address",
        "phone",
        "email",
        "ssn",
        "encounter_id",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "device_id",
    }
)
_PSEUDONYM_KEY = secrets.token_bytes(16)  # per process: pseudonyms cannot be joined across processes
_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "[DATE]"),
    (re.compile(r"\b(?:19|20)\d{6}\b"), "[DATE]"),  # DICOM DA, e.g. 19700101
    (re.compile(r"\b[A-Za-z'-]+\^[A-Za-z'^ -]*"), "[NAME]"),  # DICOM PN, e.g. Doe^John
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"), "[EMAIL]"),
    (re.compile(r"\b(?:\d[ -]?){7,}\d\b"), "[NUMBER]"),  # MRNs, phone numbers, SSNs
    (re.compile(r"\bPatient/[A-Za-z0-9\-.]{1,64}"), "Patient/[ID]"),
)


def pseudonym(value: object) -> str:
    digest = hashlib.blake2b(str(value).encode(), key=_PSEUDONYM_KEY, digest_size=6).hexdigest()
    return f"pseud:{digest}"


def scrub_text(text: str) -> str:
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key.lower() in PHI_KEYS:
            out[key] = pseudonym(value)
        elif isinstance(value, str):
            out[key] = scrub_text(value)
        elif isinstance(value, Mapping):
            out[key] = scrub_fields(value)
        elif isinstance(value, int | float | bool) or value is None:
            out[key] = value
        else:
            out[key] = scrub_text(repr(value))
    return out


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
current_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; message and extra fields pass through the PHI scrubber."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": scrub_text(record.getMessage()),
        }
        traceparent = current_traceparent.get()
        if traceparent:
            doc["trace_id"] = traceparent.split("-")[1]
        doc.update(scrub_fields(extra))
        if record.exc_info:
            # Exception text can quote input values: scrub it like any message.
            doc["exc"] = scrub_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


NOISY_LOGGERS = ("aiokafka", "kafka", "neo4j", "faust", "mode")


def logging_config(service: str, level: str = "INFO") -> dict[str, Any]:
    """dictConfig for JSON logs on stderr; libraries log warnings and above only."""
    quiet = max(logging.WARNING, logging.getLevelName(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"level": quiet} for name in NOISY_LOGGERS},
    }


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(service, level))


# ---------------------------------------------------------------- trace context (W3C traceparent)
TRACEPARENT = "traceparent"


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """A new span in the parent's trace, or a new trace when the parent is missing or malformed."""
    parts = (parent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return f"00-{parts[1]}-{secrets.token_hex(8)}-{parts[3]}"
    return new_traceparent()


def traceparent_from_headers(
    headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
) -> str | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key == TRACEPARENT and value:
            return value.decode("ascii", "replace")
    return None


# ---------------------------------------------------------------- health and metrics endpoint
ReadinessCheck = Callable[[], Awaitable[bool]]


def health_app(checks: Mapping[str, ReadinessCheck] | None = None) -> web.Application:
    """`/healthz` (alive), `/readyz` (every check passes) and `/metrics` (Prometheus)."""
    checks = dict(checks or {})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = bool(await check())
            except Exception:
                results[name] = False
        ok = all(results.values())
        return web.json_response({"ready": ok, "checks": results}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_runner(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


@asynccontextmanager
async def http_server(app: web.Application, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """Serve `app` for the duration of the block (the gateways' HTTP side, health endpoints included)."""
    runner = await start_runner(app, host, port)
    try:
        yield runner
    finally:
        await runner.cleanup()


async def start_health_server(
    host: str, port: int, checks: Mapping[str, ReadinessCheck] | None = None
) -> web.AppRunner:
    return await start_runner(health_app(checks), host, port)
