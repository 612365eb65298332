"""FHIR ingestion gateway: EHRs POST R4 resources, batch/transaction Bundles and Subscription notifications.

caller --(Bearer token)--> parse + validate (fhir.resources) --(invalid: 4xx + OperationOutcome, nothing published)
                        --> medstream.fhir.events.v1, keyed by Patient/<id>, in one Kafka transaction per request
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter

from services.common.auth import authenticate, load_clients
from services.common.config import Settings, get_settings
from services.common.kafka import kafka_ready, record_headers
from services.common.service import run_until_signalled
from services.common.telemetry import configure_logging, health_app, http_server
from services.common.topics import FHIR_EVENTS
from services.fhir_gateway.validation import Accepted, Issue, check_body, operation_outcome, parse_json, to_event

SERVICE = "fhir-gateway"
FHIR_JSON = "application/fhir+json"
DEV_CLIENTS = Path(__file__).resolve().parents[2] / "samples" / "fhir_clients.yaml"
log = logging.getLogger(__name__)
REQUESTS = Counter("medstream_fhir_requests_total", "FHIR requests", ["service", "outcome"])
RESOURCES = Counter("medstream_fhir_resources_total", "FHIR resources published", ["service", "resource_type"])


class Unavailable(RuntimeError):
    """Kafka did not take the transaction: the caller should retry."""


class TransactionalPublisher:
    """All resources of one request in one Kafka transaction: consumers (read_committed) see all or none."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(
            {
                **settings.kafka_client_config(),
                "transactional.id": f"medstream-{SERVICE}-{settings.http_port}",
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "linger.ms": 2,
            }
        )
        self._producer.init_transactions(30)
        self._lock = threading.Lock()

    def _publish(self, accepted: list[Accepted], bundle_id: str) -> None:
        now = time.time_ns()
        with self._lock:
            try:
                self._producer.begin_transaction()
                for a in accepted:
                    event = to_event(a, now, bundle_id)
                    self._producer.produce(
                        FHIR_EVENTS.name,
                        event.SerializeToString(),
                        key=a.key.encode(),
                        headers=record_headers(event),  # type: ignore[arg-type]
                    )
                self._producer.commit_transaction(30)
            except KafkaException as exc:
                try:
                    self._producer.abort_transaction(10)
                except KafkaException:
                    pass
                raise Unavailable(str(exc)) from exc

    async def publish(self, accepted: list[Accepted], bundle_id: str = "") -> None:
        await asyncio.to_thread(self._publish, accepted, bundle_id)
        for a in accepted:
            RESOURCES.labels(SERVICE, a.resource_type).inc()


async def read_body(request: web.Request, limit: int) -> bytearray | None:
    """The body, or None when it is over `limit` (read in chunks into one buffer: aiohttp's `read()` would keep a
    second copy on the request for its lifetime)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 20):
        body += chunk
        if len(body) > limit:
            return None
    return body


def outcome_response(status: int, issues: list[Issue]) -> web.Response:
    return web.json_response(operation_outcome(issues), status=status, content_type=FHIR_JSON)


def fhir_app(settings: Settings, clients: dict[str, str], publisher: Any) -> web.Application:
    async def ready() -> bool:
        return await asyncio.to_thread(kafka_ready, settings, 2.0)

    app = health_app({"kafka": ready})

    async def receive(request: web.Request, expected_type: str | None) -> web.Response:
        if authenticate(request.headers.get("Authorization"), clients) is None:
            REQUESTS.labels(SERVICE, "unauthenticated").inc()
            resp = outcome_response(401, [Issue("login", "missing or invalid bearer token")])
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        if request.content_type not in (FHIR_JSON, "application/json"):
            REQUESTS.labels(SERVICE, "refused").inc()
            return outcome_response(415, [Issue("not-supported", f"Content-Type must be {FHIR_JSON}")])
        body = await read_body(request, settings.fhir_max_body_bytes)
        if body is None:
            REQUESTS.labels(SERVICE, "refused").inc()
            return outcome_response(413, [Issue("too-costly", f"body over {settings.fhir_max_body_bytes} bytes")])
        doc, issues = parse_json(body)
        del body  # the parsed document is the one copy kept from here on
        if issues:
            REQUESTS.labels(SERVICE, "invalid").inc()
            return outcome_response(400, issues)
        checked = check_body(doc, expected_type, settings.fhir_max_resource_bytes)
        if checked.issues:
            REQUESTS.labels(SERVICE, "invalid").inc()
            return outcome_response(422, checked.issues)
        bundle_id = str(doc.get("id", "")) if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" else ""
        try:
            await publisher.publish(checked.accepted, bundle_id)
        except Unavailable:
            REQUESTS.labels(SERVICE, "unavailable").inc()
            resp = outcome_response(503, [Issue("transient", "event store unavailable, retry")])
            resp.headers["Retry-After"] = "5"
            return resp
        REQUESTS.labels(SERVICE, "accepted").inc()
        if expected_type:  # a single resource: 201 with the stored resource
            only = checked.accepted[0]
            return web.json_response(
                only.resource,
                status=201,
                content_type=FHIR_JSON,
                headers={"Location": f"{only.resource_type}/{only.resource_id}"},
            )
        return web.json_response(
            {
                "resourceType": "Bundle",
                "type": "transaction-response" if doc.get("type") == "transaction" else "batch-response",
                "entry": [
                    {"response": {"status": "201 Created", "location": f"{a.resource_type}/{a.resource_id}"}}
                    for a in checked.accepted
                ],
            },
            status=200,
            content_type=FHIR_JSON,
        )

    async def post_resource(request: web.Request) -> web.Response:
        return await receive(request, request.match_info["resource_type"])

    async def post_bundle(request: web.Request) -> web.Response:
        return await receive(request, None)

    app.router.add_post("/fhir/r4", post_bundle)
    app.router.add_post("/fhir/r4/subscription-notification", post_bundle)
    app.router.add_post("/fhir/r4/{resource_type}", post_resource)
    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    clients = load_clients(settings.fhir_clients or DEV_CLIENTS)
    publisher = await asyncio.to_thread(TransactionalPublisher, settings)
    async with http_server(fhir_app(settings, clients, publisher), settings.http_host, settings.http_port):
        log.info("fhir gateway started", extra={"clients": len(clients)})
        await stop.wait()


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    run_until_signalled(lambda stop: serve(settings, stop))
