"""Imaging gateway: DICOM in over DIMSE (C-STORE, C-ECHO) and DICOMweb STOW-RS, claim checks out to Kafka.

modality/PACS --C-STORE--> \\                                     / blob store (temp file, fsync, rename)
EHR/viewer ---STOW-RS-----> parse header (refuse with a DICOM status) --> medstream.dicom.instances.v1 (acks=all)
the sender hears Success (0x0000 / HTTP 200) only after both the blob and the Kafka record are durable.

Duplicates: the same SOPInstanceUID with the same bytes (sha256) is stored once and announced once; a second send
answers Success. The same UID with different bytes is a new version: stored next to the first and announced, so
the imaging service sees every version (the latest arrival wins there).
The blob store is the local filesystem (file:// claim checks) or S3 (s3://), per MEDSTREAM_BLOB_STORE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaException
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import dicom_pb2
from prometheus_client import Counter, Histogram
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, register_uid, uid_to_service_class  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.common.auth import authenticate, load_clients
from services.common.blobs import BlobStore, blob_store
from services.common.config import Settings, get_settings
from services.common.kafka import EventProducer, kafka_ready
from services.common.service import run_until_signalled
from services.common.telemetry import configure_logging, health_app, http_server
from services.common.topics import DICOM_INSTANCES
from services.imaging_gateway.instances import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    Instance,
    Refusal,
    parse_instance,
)
from services.imaging_gateway.stow import (
    DICOM_JSON,
    BadRequest,
    Outcome,
    Stored,
    http_status,
    response_body,
    split_multipart,
)

SERVICE = "imaging-gateway"
DEV_CLIENTS = Path(__file__).resolve().parents[2] / "samples" / "dicomweb_clients.yaml"
log = logging.getLogger(__name__)
INSTANCES = Counter(
    "medstream_dicom_instances_total", "DICOM instances received", ["service", "transport", "outcome", "status"]
)
RECEIVED_BYTES = Counter("medstream_dicom_received_bytes_total", "Bytes of stored DICOM instances", ["service"])
STORE_SECONDS = Histogram(
    "medstream_dicom_store_seconds",
    "Receipt to durable (blob + Kafka ack) per instance",
    ["service", "transport"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRANSPORTS = {
    dicom_pb2.DICOM_TRANSPORT_DIMSE_C_STORE: "dimse",
    dicom_pb2.DICOM_TRANSPORT_STOW_RS: "stow",
}


def accepted_sop_classes(settings: Settings) -> list[str]:
    return list(settings.dicom_sop_classes) or [str(c.abstract_syntax) for c in StoragePresentationContexts]


def accepted_transfer_syntaxes(settings: Settings) -> list[str]:
    """In order of preference: pynetdicom accepts the first of these that a proposed context lists."""
    return list(settings.dicom_transfer_syntaxes) or sorted(map(str, AllTransferSyntaxes), key=_preference)


def _preference(uid: str) -> int:
    # Compressed first: a sender proposing its file's own syntax next to uncompressed ones then sends the file as
    # is, instead of transcoding (which fails where the sender has no codec). Implicit VR last: it loses VRs.
    order = {str(ExplicitVRLittleEndian): 1, str(DeflatedExplicitVRLittleEndian): 2, str(ExplicitVRBigEndian): 3}
    if uid == str(ImplicitVRLittleEndian):
        return 4
    return order.get(uid, 0)


class Gateway:
    """Both transports end here: parse, store, announce, answer."""

    def __init__(self, settings: Settings, blobs: BlobStore, producer: Any) -> None:
        self.settings, self.blobs, self.producer = settings, blobs, producer
        self.sop_classes = frozenset(accepted_sop_classes(settings))
        # Striped locks: two concurrent sends of one instance are serialised, so it is announced once.
        self._locks = [asyncio.Lock() for _ in range(256)]

    async def receive(
        self,
        data: bytes,
        transport: dicom_pb2.DicomTransport.ValueType,
        calling_ae_title: str = "",
        expected_sop_class: str | None = None,
        expected_study: str | None = None,
    ) -> Outcome:
        started = time.perf_counter()
        parsed = parse_instance(data, self.sop_classes, expected_sop_class, expected_study)
        outcome = parsed if isinstance(parsed, Refusal) else await self._store(parsed, transport, calling_ae_title)
        kind = TRANSPORTS.get(transport, "other")
        if isinstance(outcome, Refusal):
            INSTANCES.labels(SERVICE, kind, "refused", f"0x{outcome.status:04X}").inc()
            log.info(
                "instance refused",
                extra={"status": f"0x{outcome.status:04X}", "reason": outcome.reason, "transport": kind},
            )
        else:
            INSTANCES.labels(SERVICE, kind, "duplicate" if outcome.duplicate else "stored", "0x0000").inc()
            STORE_SECONDS.labels(SERVICE, kind).observe(time.perf_counter() - started)
        return outcome

    async def _store(
        self, instance: Instance, transport: dicom_pb2.DicomTransport.ValueType, calling_ae_title: str
    ) -> Outcome:
        async with self._locks[hash(instance.sop_instance_uid) % len(self._locks)]:
            try:
                uri = await asyncio.to_thread(self.blobs.put, instance.sop_instance_uid, instance.sha256, instance.data)
                duplicate = await asyncio.to_thread(self.blobs.announced, uri)
            except OSError as exc:
                log.error("blob store write failed", extra={"error": type(exc).__name__})
                return _refusal(instance, OUT_OF_RESOURCES, "blob store unavailable")
            if duplicate:
                return Stored(instance, duplicate=True)
            event = arrival_event(
                instance, uri, transport, calling_ae_title, self.settings.dicom_trust_images_in_acquisition
            )
            try:
                await self.producer.send(DICOM_INSTANCES.name, instance.series_instance_uid.encode(), event)
            except KafkaException as exc:
                log.error("kafka did not acknowledge the arrival", extra={"error": str(exc.args[0])})
                return _refusal(instance, OUT_OF_RESOURCES, "event store unavailable")
            try:
                await asyncio.to_thread(self.blobs.mark_announced, uri)
            except OSError as exc:
                # The instance is stored and announced; without the marker a resend announces it once more.
                log.warning("announced marker not written", extra={"error": type(exc).__name__})
            RECEIVED_BYTES.labels(SERVICE).inc(len(instance.data))
            log.info(
                "instance stored",
                extra={"sop_instance_uid": instance.sop_instance_uid, "transport": TRANSPORTS.get(transport, "")},
            )
            return Stored(instance)


def _refusal(instance: Instance, status: int, reason: str) -> Refusal:
    return Refusal(status, reason, instance.sop_class_uid, instance.sop_instance_uid)


def arrival_event(
    instance: Instance,
    blob_uri: str,
    transport: dicom_pb2.DicomTransport.ValueType,
    calling_ae_title: str,
    trust_count: bool = False,
) -> dicom_pb2.DicomInstanceArrival:
    """The claim check. `trust_count`: announce Images in Acquisition as the series' instance count (values
    under 2 are ignored: samples in the wild carry 1 on every slice of a 20-slice series)."""
    received = Timestamp()
    received.FromDatetime(datetime.now(UTC))
    return dicom_pb2.DicomInstanceArrival(
        sop_instance_uid=instance.sop_instance_uid,
        series_instance_uid=instance.series_instance_uid,
        study_instance_uid=instance.study_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        modality=instance.modality,
        body_part_examined=instance.body_part_examined,
        patient_id=instance.patient_id,
        accession_number=instance.accession_number,
        instance_number=instance.instance_number,
        blob_uri=blob_uri,
        sha256=instance.sha256,
        size_bytes=len(instance.data),
        received_at=received,
        transport=transport,
        calling_ae_title=calling_ae_title,
        expected_instances_in_series=instance.expected_instances
        if trust_count and instance.expected_instances > 1
        else 0,
    )


# ---------------------------------------------------------------- DIMSE


def storage_scp(
    settings: Settings, gateway: Gateway, loop: asyncio.AbstractEventLoop
) -> Callable[[], ThreadedAssociationServer]:
    """A pynetdicom Storage SCP whose C-STORE handler (in pynetdicom's threads) awaits the gateway on `loop`."""
    ae = AE(ae_title=settings.dicom_ae_title)
    transfer_syntaxes = accepted_transfer_syntaxes(settings)
    for sop_class in accepted_sop_classes(settings):
        # pynetdicom's own storage list has retired classes (e.g. retired US) it cannot serve: it would abort the
        # whole association at their first C-STORE. Registered as storage classes, they reach the handler.
        if uid_to_service_class(sop_class) is not StorageServiceClass:
            register_uid(sop_class, f"MedstreamStorage_{sop_class.replace('.', '_')}", StorageServiceClass)
        ae.add_supported_context(sop_class, transfer_syntaxes)
    ae.add_supported_context(Verification)
    wait_s = settings.dicom_publish_timeout_ms / 1000 + 30

    def handle_store(event: evt.Event) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:
            log.exception("C-STORE request could not be encoded")
            return CANNOT_UNDERSTAND
        future = asyncio.run_coroutine_threadsafe(
            gateway.receive(
                data,
                dicom_pb2.DICOM_TRANSPORT_DIMSE_C_STORE,
                calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
                expected_sop_class=str(event.request.AffectedSOPClassUID),
            ),
            loop,
        )
        try:
            outcome = future.result(wait_s)
        except Exception:
            log.exception("C-STORE handling failed")
            return OUT_OF_RESOURCES
        return outcome.status if isinstance(outcome, Refusal) else SUCCESS

    def handle_echo(_: evt.Event) -> int:
        return SUCCESS

    def start() -> ThreadedAssociationServer:
        return ae.start_server(  # type: ignore[return-value]
            (settings.http_host, settings.dicom_dimse_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, handle_store), (evt.EVT_C_ECHO, handle_echo)],
        )

    return start


# ---------------------------------------------------------------- DICOMweb STOW-RS


def http_app(settings: Settings, gateway: Gateway, clients: dict[str, str]) -> web.Application:
    async def ready() -> bool:
        return await asyncio.to_thread(kafka_ready, settings, 2.0)

    app = health_app({"kafka": ready})
    app._client_max_size = settings.dicom_max_body_bytes

    async def stow(request: web.Request) -> web.Response:
        if authenticate(request.headers.get("Authorization"), clients) is None:
            return web.json_response(
                {"error": "missing or invalid bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        study = request.match_info.get("study")
        try:
            body = await request.read()
            parts = split_multipart(request.headers.get("Content-Type", ""), body)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"body over {settings.dicom_max_body_bytes} bytes"}, status=413)
        except BadRequest as exc:
            return web.json_response({"error": exc.reason}, status=exc.status)
        outcomes = await asyncio.gather(*(_receive_part(part.content_type, part.data, study) for part in parts))
        status = http_status(outcomes)
        base = f"{request.scheme}://{request.host}/dicomweb"
        headers = {"Retry-After": "5"} if status == 503 else None
        # No charset parameter: clients (dicomweb-client) compare the media type exactly; DICOM JSON is UTF-8.
        body_json = json.dumps(response_body(outcomes, base, study), separators=(",", ":")).encode()
        return web.Response(body=body_json, status=status, content_type=DICOM_JSON, headers=headers)

    async def _receive_part(content_type: str, data: bytes, study: str | None) -> Outcome:
        if content_type != "application/dicom":
            return Refusal(CANNOT_UNDERSTAND, f"part type {content_type} is not application/dicom")
        return await gateway.receive(data, dicom_pb2.DICOM_TRANSPORT_STOW_RS, expected_study=study)

    app.router.add_post("/dicomweb/studies", stow)
    app.router.add_post("/dicomweb/studies/{study}", stow)
    return app


# ---------------------------------------------------------------- process


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    clients = load_clients(settings.dicom_stow_clients or DEV_CLIENTS)
    blobs = blob_store(settings)
    producer = EventProducer(settings, SERVICE, **{"message.timeout.ms": settings.dicom_publish_timeout_ms})
    gateway = Gateway(settings, blobs, producer)
    try:
        async with http_server(http_app(settings, gateway, clients), settings.http_host, settings.http_port):
            scp = storage_scp(settings, gateway, asyncio.get_running_loop())()
            log.info(
                "imaging gateway started",
                extra={"dimse_port": settings.dicom_dimse_port, "sop_classes": len(gateway.sop_classes)},
            )
            try:
                await stop.wait()
            finally:
                await asyncio.to_thread(scp.shutdown)
    finally:
        producer.close()


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a line per association and per message otherwise
    run_until_signalled(lambda stop: serve(settings, stop))
