"""Wearables ingestion gateway: vendors stream readings over gRPC or POST JSON batches over HTTP.

vendor --(Bearer token)--> template mapping + validation --> medstream.wearables.samples.v1 (acks=all)
                                                          --> medstream.wearables.receipts.v1
answer per batch: accepted count + a reason for every rejected value; sent only once Kafka has it all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from confluent_kafka import KafkaException
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import wearable_pb2
from medstream.ingest.v1 import wearables_pb2, wearables_pb2_grpc
from prometheus_client import Counter

from services.common.config import Settings, get_settings
from services.common.kafka import EventProducer, kafka_ready
from services.common.service import run_until_signalled
from services.common.telemetry import configure_logging, health_app, http_server
from services.common.topic_reader import read_messages
from services.common.topics import WEARABLE_RECEIPTS, WEARABLE_SAMPLES
from services.wearables_gateway.ingest import BatchOutcome, content_hash, process
from services.wearables_gateway.registry import Registry, Vendor, load_registry
from services.wearables_gateway.templates import Rejection, Template, load_templates

SERVICE = "wearables-gateway"
DEV_REGISTRY = Path(__file__).resolve().parents[2] / "samples" / "wearables_registry.yaml"
log = logging.getLogger(__name__)
SAMPLES = Counter("medstream_ingest_samples_total", "Wearable values received", ["service", "outcome"])
BATCHES = Counter("medstream_ingest_batches_total", "Vendor batches received", ["service", "transport", "outcome"])


@dataclass
class Result:
    idempotency_key: str
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    duplicate: bool = False
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key,
            "accepted": self.accepted,
            "rejected": [{"index": r.index, "field": r.field, "reason": r.reason} for r in self.rejections],
            "duplicate": self.duplicate,
            **({"error": self.error} if self.error else {}),
        }

    def as_proto(self) -> wearables_pb2.BatchResult:
        return wearables_pb2.BatchResult(
            idempotency_key=self.idempotency_key,
            accepted=self.accepted,
            duplicate=self.duplicate,
            error=self.error,
            rejections=[
                wearables_pb2.SampleRejection(reading_index=r.index, field=r.field, reason=r.reason)
                for r in self.rejections
            ],
        )


class Unavailable(RuntimeError):
    """Kafka did not acknowledge in time: the vendor should retry the same batch."""


class Gateway:
    """Shared by both transports: idempotency, mapping, validation and durable publishing."""

    def __init__(
        self, settings: Settings, registry: Registry, templates: Mapping[str, Template], producer: EventProducer
    ) -> None:
        self.settings, self.registry, self.templates, self.producer = settings, registry, templates, producer
        self.receipts: dict[str, wearable_pb2.IngestReceipt] = {}
        # Striped locks: two concurrent retries of one batch are serialised, memory stays bounded.
        self._locks = [asyncio.Lock() for _ in range(256)]

    def load_receipts(self) -> int:
        """Earlier answers, so retries after a gateway restart are still recognised."""
        for receipt in read_messages(self.settings, WEARABLE_RECEIPTS.name, wearable_pb2.IngestReceipt, timeout_s=30):
            self.receipts[f"{receipt.vendor_id}|{receipt.idempotency_key}"] = receipt
        return len(self.receipts)

    async def ingest(
        self, vendor: Vendor, idempotency_key: str, device_type: str, readings: Sequence[Mapping[str, Any]]
    ) -> Result:
        if not idempotency_key or len(idempotency_key) > 200:
            return Result(idempotency_key, error="idempotency_key is required (at most 200 characters)")
        key = f"{vendor.vendor_id}|{idempotency_key}"
        digest = content_hash(device_type, readings)
        async with self._locks[hash(key) % len(self._locks)]:
            earlier = self.receipts.get(key)
            if earlier is not None:
                if earlier.content_sha256 != digest:
                    return Result(idempotency_key, error="idempotency_key was used for a different batch")
                # Same batch again: recompute the same answer (as of the first receipt), publish nothing.
                outcome = process(
                    vendor, device_type, readings, self.templates, idempotency_key, earlier.received_at.ToDatetime(UTC)
                )
                return Result(idempotency_key, outcome.accepted, outcome.rejections, duplicate=True)
            now = datetime.now(UTC)
            outcome = process(vendor, device_type, readings, self.templates, idempotency_key, now)
            if outcome.error:
                return Result(idempotency_key, error=outcome.error)
            await self._publish(key, vendor, idempotency_key, digest, outcome, now)
            return Result(idempotency_key, outcome.accepted, outcome.rejections)

    async def _publish(
        self, key: str, vendor: Vendor, idempotency_key: str, digest: str, outcome: BatchOutcome, now: datetime
    ) -> None:
        received = Timestamp()
        received.FromDatetime(now)
        receipt = wearable_pb2.IngestReceipt(
            vendor_id=vendor.vendor_id,
            idempotency_key=idempotency_key,
            accepted=outcome.accepted,
            rejected=len(outcome.rejections),
            received_at=received,
            content_sha256=digest,
        )
        try:
            # Samples first, receipt second: a crash in between means a retry republishes the samples, which
            # the wearables service deduplicates by (device, metric, time); never a lost sample.
            await asyncio.gather(
                *(
                    self.producer.send(WEARABLE_SAMPLES.name, b.samples[0].patient_id.encode(), b)
                    for b in outcome.batches
                )
            )
            await self.producer.send(WEARABLE_RECEIPTS.name, key.encode(), receipt)
        except KafkaException as exc:
            raise Unavailable(str(exc)) from exc
        self.receipts[key] = receipt
        SAMPLES.labels(SERVICE, "accepted").inc(outcome.accepted)
        SAMPLES.labels(SERVICE, "rejected").inc(len(outcome.rejections))


# ---------------------------------------------------------------- HTTP


def http_app(gateway: Gateway, settings: Settings) -> web.Application:
    async def ready() -> bool:
        return await asyncio.to_thread(kafka_ready, settings, 2.0)

    app = health_app({"kafka": ready})
    app._client_max_size = settings.wearables_max_body_bytes  # applies to the decompressed body

    async def post_batch(request: web.Request) -> web.Response:
        vendor = gateway.registry.authenticate(request.headers.get("Authorization"))
        if vendor is None:
            BATCHES.labels(SERVICE, "http", "unauthenticated").inc()
            return web.json_response(
                {"error": "missing or invalid bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        if request.content_type != "application/json":
            return web.json_response({"error": "Content-Type must be application/json"}, status=415)
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"body over {settings.wearables_max_body_bytes} bytes"}, status=413)
        except (ValueError, UnicodeDecodeError) as exc:
            return web.json_response({"error": f"body is not JSON: {exc}"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("readings"), list):
            return web.json_response({"error": "body must be an object with a 'readings' list"}, status=400)
        key = str(body.get("idempotency_key") or request.headers.get("Idempotency-Key") or "")
        try:
            result = await gateway.ingest(vendor, key, str(body.get("device_type", "")), body["readings"])
        except Unavailable:
            BATCHES.labels(SERVICE, "http", "unavailable").inc()
            return web.json_response(
                {"error": "storage unavailable, retry the same batch"}, status=503, headers={"Retry-After": "5"}
            )
        BATCHES.labels(SERVICE, "http", "error" if result.error else "ok").inc()
        return web.json_response(result.as_json(), status=422 if result.error else 200)

    app.router.add_post("/v1/wearables/batches", post_batch)
    return app


# ---------------------------------------------------------------- gRPC


class IngestServicer(wearables_pb2_grpc.WearableIngestServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def StreamBatches(self, request_iterator, context):  # type: ignore[no-untyped-def]
        metadata = dict(context.invocation_metadata() or ())
        vendor = self.gateway.registry.authenticate(metadata.get("authorization"))
        if vendor is None:
            BATCHES.labels(SERVICE, "grpc", "unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            return None  # abort raises; this keeps the type checker informed
        results = []
        async for request in request_iterator:
            readings = [json_format.MessageToDict(r) for r in request.readings]
            try:
                result = await self.gateway.ingest(vendor, request.idempotency_key, request.device_type, readings)
            except Unavailable:
                BATCHES.labels(SERVICE, "grpc", "unavailable").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable, retry the same batches")
            BATCHES.labels(SERVICE, "grpc", "error" if result.error else "ok").inc()
            results.append(result.as_proto())
        return wearables_pb2.StreamBatchesResponse(results=results)


# ---------------------------------------------------------------- process


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    registry = load_registry(settings.wearables_registry or DEV_REGISTRY)
    templates = (
        load_templates(settings.wearables_templates_dir) if settings.wearables_templates_dir else load_templates()
    )
    producer = EventProducer(settings, SERVICE, **{"message.timeout.ms": 30_000})
    gateway = Gateway(settings, registry, templates, producer)
    loaded = await asyncio.to_thread(gateway.load_receipts)
    log.info("gateway starting", extra={"receipts": loaded, "device_types": len(templates)})
    try:
        async with http_server(http_app(gateway, settings), settings.http_host, settings.http_port):
            server = grpc.aio.server()
            wearables_pb2_grpc.add_WearableIngestServiceServicer_to_server(IngestServicer(gateway), server)
            server.add_insecure_port(f"{settings.http_host}:{settings.wearables_grpc_port}")  # TLS at the ingress
            await server.start()
            try:
                await stop.wait()
            finally:
                await server.stop(grace=10)
    finally:
        producer.close()


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    run_until_signalled(lambda stop: serve(settings, stop))
