"""FHIR ingestion gateway: EHRs POST R4 resources, batch/transaction Bundles and Subscription notifications.

caller --(Bearer token)--> parse + validate (fhir.resources) --(invalid: 4xx + OperationOutcome, nothing published)
                        --> medstream.fhir.events.v1, keyed by Patient/<id>, in one Kafka transaction per request
                            together with a receipt on medstream.fhir.receipts.v1

Exactly once per request: the receipt (digest of the caller and the request's event ids, which derive from resource
content) commits with the resources or not at all. Every replica reads the receipts topic at start and follows it,
so a retry of a committed request, at this replica or another, is answered with the same response and publishes
nothing. Two replicas receiving the same request in the same few milliseconds could both publish it; consumers
still recognise the repeat by its event ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import fhir_pb2
from prometheus_client import Counter

from services.common.auth import authenticate, load_clients
from services.common.config import Settings, get_settings
from services.common.kafka import kafka_ready, record_headers
from services.common.service import run_until_signalled
from services.common.telemetry import configure_logging, health_app, http_server
from services.common.topics import FHIR_EVENTS, FHIR_RECEIPTS
from services.fhir_gateway.validation import Accepted, Issue, check_body, operation_outcome, parse_json, to_event

SERVICE = "fhir-gateway"
FHIR_JSON = "application/fhir+json"
DEV_CLIENTS = Path(__file__).resolve().parents[2] / "samples" / "fhir_clients.yaml"
log = logging.getLogger(__name__)
REQUESTS = Counter("medstream_fhir_requests_total", "FHIR requests", ["service", "outcome"])
RESOURCES = Counter("medstream_fhir_resources_total", "FHIR resources published", ["service", "resource_type"])
RETRIES = Counter("medstream_fhir_retries_total", "Requests answered from a receipt, nothing republished", ["service"])


class Unavailable(RuntimeError):
    """Kafka did not take the transaction: the caller should retry."""


def request_digest(client_id: str, accepted: Sequence[Accepted]) -> str:
    """Same caller, same resources in the same order: same digest (event ids derive from resource content)."""
    h = hashlib.sha256(client_id.encode())
    for a in accepted:
        h.update(b"\n" + a.event_id.encode())
    return h.hexdigest()


class ReceiptBook:
    """The digests of committed requests: read from the receipts topic at start, then followed in a thread so
    receipts written by other replicas are known too. One short string per request within the topic's retention."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._digests: set[str] = set()
        self._lock = threading.Lock()
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="fhir-receipts", daemon=True)

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            return digest in self._digests

    def __len__(self) -> int:
        with self._lock:
            return len(self._digests)

    def add(self, digest: str) -> None:
        with self._lock:
            self._digests.add(digest)

    def start(self, timeout_s: float = 60.0) -> int:
        """Read every receipt up to the current end (blocking), then keep following; the count read."""
        self._thread.start()
        if not self._caught_up.wait(timeout_s):
            raise Unavailable(f"receipts topic not read within {timeout_s:.0f} s")
        return len(self)

    def close(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        consumer = Consumer(
            {
                **self._settings.kafka_client_config(),
                "group.id": f"medstream-{SERVICE}-receipts",  # never committed: assignment is manual
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            metadata = consumer.list_topics(FHIR_RECEIPTS.name, timeout=30)
            partitions = sorted(metadata.topics[FHIR_RECEIPTS.name].partitions)
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(FHIR_RECEIPTS.name, p), timeout=30)[1]
                for p in partitions
            }
            consumer.assign([TopicPartition(FHIR_RECEIPTS.name, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error() and msg.value():
                    self.add(fhir_pb2.FhirRequestReceipt.FromString(msg.value()).digest)
                if not self._caught_up.is_set():
                    # Positions, not the last message seen: transaction markers occupy offsets too.
                    done = consumer.position([TopicPartition(FHIR_RECEIPTS.name, p) for p in partitions])
                    if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in done):
                        self._caught_up.set()
        except KafkaException:
            log.exception("receipts follower stopped")
        finally:
            consumer.close()


class TransactionalPublisher:
    """All resources of one request and its receipt in one Kafka transaction: consumers (read_committed) see all
    or none, and a retry of a committed request is recognised by its receipt."""

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
        self.receipts = ReceiptBook(settings)

    def _publish(self, accepted: list[Accepted], bundle_id: str, client_id: str) -> bool:
        now = time.time_ns()
        digest = request_digest(client_id, accepted)
        with self._lock:
            if digest in self.receipts:
                return False
            received = Timestamp()
            received.FromNanoseconds(now)
            receipt = fhir_pb2.FhirRequestReceipt(
                digest=digest, client_id=client_id, resources=len(accepted), received_at=received, bundle_id=bundle_id
            )
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
                self._producer.produce(FHIR_RECEIPTS.name, receipt.SerializeToString(), key=digest.encode())
                self._producer.commit_transaction(30)
            except KafkaException as exc:
                try:
                    self._producer.abort_transaction(10)
                except KafkaException:
                    pass
                raise Unavailable(str(exc)) from exc
            self.receipts.add(digest)
            return True

    async def publish(self, accepted: list[Accepted], bundle_id: str = "", client_id: str = "") -> bool:
        """Publish the request's resources; False when a receipt shows it was committed before (a retry)."""
        published = await asyncio.to_thread(self._publish, accepted, bundle_id, client_id)
        if published:
            for a in accepted:
                RESOURCES.labels(SERVICE, a.resource_type).inc()
        else:
            RETRIES.labels(SERVICE).inc()
        return published


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
        client_id = authenticate(request.headers.get("Authorization"), clients)
        if client_id is None:
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
            await publisher.publish(checked.accepted, bundle_id, client_id)
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
    receipts = await asyncio.to_thread(publisher.receipts.start)
    try:
        async with http_server(fhir_app(settings, clients, publisher), settings.http_host, settings.http_port):
            log.info("fhir gateway started", extra={"clients": len(clients), "receipts": receipts})
            await stop.wait()
    finally:
        publisher.receipts.close()


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    run_until_signalled(lambda stop: serve(settings, stop))
