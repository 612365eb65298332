"""Imaging dispatcher: sends each analysis' DICOM SEG and SR to the PACS and archives that should have them.

    medstream.fhir.writeback.v1 --> DiagnosticReport with application/dicom presentedForm
        --> read the objects from the blob store --> C-STORE (dicom://) or STOW-RS (http[s]://), per destination
        --> commit offsets                      (refused by the destination --> medstream.deadletter.v1, with why)

Each destination has its own consumer group and loop, so a PACS that is down holds up only what goes to it: its
loop waits and retries with nothing committed (a restart sends the same objects again, which a PACS stores once:
the SOP Instance UIDs are deterministic). A destination that refuses an object for good gets the report
dead-lettered with its answer, and the loop moves on. A new destination starts at the topic's end
(`dispatch_start`), so adding one does not send it the whole history.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from confluent_kafka import Consumer, Message, TopicPartition
from medstream.events.v1 import fhir_pb2
from prometheus_client import Counter

from services.common.blobs import BlobStoreUnavailable, read_blob
from services.common.config import Settings, get_settings
from services.common.consumer_loop import consume, dead_letter_producer, subscribed
from services.common.deadletter import PROCESSING_ERROR, VALIDATION_ERROR, DeadLetters, SourceRecord
from services.common.service import retry_until_done, run_until_signalled
from services.common.telemetry import CONSUMED, configure_logging, health_app, http_server
from services.common.topics import FHIR_WRITEBACK
from services.imaging_dispatcher.destinations import DICOM, Destination, Refused, Unreachable, parse_destinations

SERVICE = "imaging-dispatcher"
BATCH_MAX, POLL_TIMEOUT_S = 20, 0.5
# A destination may be down for hours; the loop keeps its records uncommitted meanwhile. librdkafka's heartbeats
# keep the member alive, and this lets one record's wait last up to a day (the broker's maximum) without a rebalance.
MAX_POLL_INTERVAL_MS = 86_400_000
log = logging.getLogger(__name__)
REPORTS = Counter(
    "medstream_dispatch_reports_total",
    "DiagnosticReports handled per destination: sent, refused (dead-lettered) or without DICOM objects",
    ["service", "destination", "outcome"],
)
OBJECTS = Counter("medstream_dispatch_objects_total", "DICOM objects delivered", ["service", "destination"])


def dicom_objects(event: fhir_pb2.FhirResourceEvent) -> list[str]:
    """The blob URIs of the DICOM objects a DiagnosticReport presents (its SEG and SR); [] for anything else."""
    if event.resource_type != "DiagnosticReport":
        return []
    resource = json.loads(event.resource_json)
    forms = resource.get("presentedForm", []) if isinstance(resource, dict) else []
    return [f["url"] for f in forms if isinstance(f, dict) and f.get("contentType") == DICOM and f.get("url")]


class Dispatcher:
    """One destination's loop over the write-back topic."""

    def __init__(self, destination: Destination, settings: Settings, dead_letters: DeadLetters) -> None:
        self.destination = destination
        self.settings = settings
        self.dead_letters = dead_letters
        self.ready = False  # partitions assigned and their start known
        self.starts: list[TopicPartition] = []  # start offsets of a new group, committed by the loop

    async def refuse(self, record: SourceRecord, reason: int, why: str) -> None:
        REPORTS.labels(SERVICE, self.destination.name, "refused").inc()
        await self.dead_letters.publish(record, reason, f"destination {self.destination.name}: {why}"[:1000])

    async def handle(self, record: SourceRecord) -> None:
        CONSUMED.labels(SERVICE, record.topic).inc()
        event = await self.dead_letters.decode_or_dead_letter(record, fhir_pb2.FhirResourceEvent)
        if event is None:
            return
        try:
            uris = dicom_objects(event)
        except ValueError as exc:
            await self.refuse(record, VALIDATION_ERROR, f"resource_json is not JSON: {exc}"[:300])
            return
        if not uris:
            if event.resource_type == "DiagnosticReport":
                REPORTS.labels(SERVICE, self.destination.name, "no-dicom").inc()
            return
        objects = []
        for uri in uris:
            try:
                data = await retry_until_done(
                    lambda uri=uri: asyncio.to_thread(read_blob, uri, self.settings),  # type: ignore[misc]
                    "blob store",
                    retry_on=(BlobStoreUnavailable,),
                )
            except OSError as exc:  # gone or not ours to read: no retry brings it back
                await self.refuse(record, PROCESSING_ERROR, f"evidence object unreadable: {type(exc).__name__}")
                return
            objects.append(data)
        try:
            await retry_until_done(
                lambda: asyncio.to_thread(self.destination.send, objects),
                f"destination {self.destination.name}",
                retry_on=(Unreachable,),
            )
        except Refused as exc:
            await self.refuse(record, PROCESSING_ERROR, str(exc))
            return
        REPORTS.labels(SERVICE, self.destination.name, "sent").inc()
        OBJECTS.labels(SERVICE, self.destination.name).inc(len(objects))
        extra = {"destination": self.destination.name, "objects": len(objects), "report": event.resource_id}
        log.info("evidence dispatched", extra=extra)

    async def handle_each(self, records: list[SourceRecord]) -> None:
        """One at a time, in order: a record waits for its destination before the next one is tried."""
        for record in records:
            await self.handle(record)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Pin where a new group starts (`dispatch_start`) and remember it to commit: a group that has committed
        nothing would otherwise resolve 'latest' again after a restart and skip what arrived while it was down."""
        committed = consumer.committed(partitions, timeout=30)
        for p in committed:
            if p.offset < 0:
                low, high = consumer.get_watermark_offsets(p, timeout=30)
                p.offset = high if self.settings.dispatch_start == "latest" else low
                self.starts.append(p)
        consumer.assign(committed)
        self.ready = True

    def poll(self, consumer: Consumer) -> list[Message]:
        """`next_batch`, then commit the starts that `on_assign` pinned while it polled."""
        messages = next_batch(consumer)
        if self.starts:
            starts, self.starts = self.starts, []
            consumer.commit(offsets=starts, asynchronous=False)
        return messages

    async def run(self) -> None:
        group = f"medstream-{SERVICE}-{self.destination.name}"
        config = {"auto.offset.reset": self.settings.dispatch_start, "max.poll.interval.ms": MAX_POLL_INTERVAL_MS}
        topics = [FHIR_WRITEBACK.name]
        with subscribed(self.settings, group, topics, config=config, on_assign=self.on_assign) as consumer:
            await consume(
                lambda: self.poll(consumer),
                self.handle_each,
                lambda: consumer.commit(asynchronous=False),
                service=SERVICE,
                topic=FHIR_WRITEBACK.name,
            )


def next_batch(consumer: Consumer) -> list[Message]:
    """What is there, up to BATCH_MAX, as soon as one record is: `consume(n, timeout)` alone waits for n records or
    the whole timeout, which would add up to POLL_TIMEOUT_S to every report's way to the PACS."""
    first = consumer.poll(POLL_TIMEOUT_S)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH_MAX - 1, 0)]


def dispatchers(settings: Settings, dead_letters: DeadLetters) -> list[Dispatcher]:
    token = settings.dispatch_stow_token.get_secret_value() if settings.dispatch_stow_token else None
    destinations = parse_destinations(
        settings.dispatch_destinations,
        calling_ae=settings.dicom_ae_title,
        timeout_s=settings.dispatch_timeout_s,
        stow_token=token,
    )
    return [Dispatcher(d, settings, dead_letters) for d in destinations]


async def run(settings: Settings, stop: asyncio.Event) -> None:
    with dead_letter_producer(settings, SERVICE) as dead_letters:
        loops: Sequence[Dispatcher] = dispatchers(settings, dead_letters)
        if not loops:
            log.warning("no dispatch destinations configured (MEDSTREAM_DISPATCH_DESTINATIONS); nothing will be sent")
        for d in loops:
            log.info("dispatching", extra={"destination": d.destination.name, "to": d.destination.describe()})

        async def ready() -> bool:
            return all(d.ready for d in loops)

        async with http_server(health_app({"kafka": ready}), settings.http_host, settings.http_port):
            tasks = [asyncio.create_task(d.run(), name=f"dispatch-{d.destination.name}") for d in loops]
            stopped = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopped}:
                    task.result()  # a loop that ended on its own raised: let the process fail and be restarted
            finally:
                for task in tasks:
                    task.cancel()  # a loop waiting for its destination stops here; its records stay uncommitted
                await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a line per association and per message otherwise
    run_until_signalled(lambda stop: run(settings, stop))
