"""Kafka adapters: an idempotent producer, topic administration, and a faust app factory with a protobuf codec."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf.message import Message as ProtoMessage

from services.common.config import Settings
from services.common.telemetry import PRODUCED, TRACEPARENT, current_traceparent, new_traceparent
from services.common.topics import CATALOG, TopicSpec

M = TypeVar("M", bound=ProtoMessage)
# Every record names its protobuf type, so a consumer can refuse a record of the wrong type.
SCHEMA_HEADER = "medstream-schema"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class JsonDocument:
    """A JSON record value (for topics whose consumers expect a JSON standard, e.g. CDS Hooks responses);
    `schema` goes in the schema header where protobuf records put their message name."""

    schema: str
    body: Mapping[str, Any]

    def SerializeToString(self) -> bytes:  # the protobuf method name FaustOutputs calls
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


Record = ProtoMessage | JsonDocument


def schema_of(message: Record) -> str:
    return message.schema if isinstance(message, JsonDocument) else message.DESCRIPTOR.full_name


def record_headers(message: Record, traceparent: str | None = None) -> Headers:
    return [
        (SCHEMA_HEADER, schema_of(message).encode()),
        (TRACEPARENT, (traceparent or current_traceparent.get() or new_traceparent()).encode()),
    ]


class EventProducer:
    """confluent-kafka producer with idempotence and acks=all; `send` returns once the broker has the record."""

    def __init__(self, settings: Settings, service: str, **overrides: Any) -> None:
        conf: dict[str, Any] = {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            # Java-compatible key hashing, as faust/aiokafka and Kafka Streams use: co-partitioned state works.
            "partitioner": "murmur2_random",
            "client.id": f"medstream-{service}",
            **overrides,
        }
        self.service = service
        self._producer = Producer(conf)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name=f"{service}-producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def produce(self, topic: str, key: bytes | str | None, value: bytes, headers: Headers, on_delivery: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)  # type: ignore[arg-type]
                return
            except BufferError:  # local queue full: wait for deliveries to drain
                self._producer.poll(0.05)

    async def send(
        self, topic: str, key: bytes | str | None, message: ProtoMessage | bytes, headers: Headers | None = None
    ) -> tuple[int, int]:
        """Produce and wait for the broker's acknowledgement; returns (partition, offset)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_set_exception, future, KafkaException(err))
            else:
                loop.call_soon_threadsafe(_set_result, future, (msg.partition(), msg.offset()))

        value = message if isinstance(message, bytes) else message.SerializeToString()
        hdrs = (
            headers if headers is not None else (record_headers(message) if isinstance(message, ProtoMessage) else [])
        )
        self.produce(topic, key, value, hdrs, delivered)
        result = await future
        PRODUCED.labels(self.service, topic).inc()
        return result

    def send_sync(
        self, topic: str, key: bytes | str | None, message: ProtoMessage | bytes, headers: Headers | None = None
    ) -> None:
        """Queue a record without waiting; call `flush` to wait for all of them."""
        value = message if isinstance(message, bytes) else message.SerializeToString()
        hdrs = (
            headers if headers is not None else (record_headers(message) if isinstance(message, ProtoMessage) else [])
        )

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                raise KafkaException(err)
            PRODUCED.labels(self.service, topic).inc()

        self.produce(topic, key, value, hdrs, delivered)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise TimeoutError(f"{remaining} records not acknowledged within {timeout}s")

    def close(self) -> None:
        self.flush()
        self._closed.set()
        self._poller.join()
        # Free librdkafka's handle now: a lingering one keeps reconnecting (and logging) after the broker stops.
        del self._producer


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] = CATALOG, timeout: float = 30.0) -> list[str]:
    """Create the catalog's topics that do not exist yet; returns the names created."""
    admin = AdminClient(settings.kafka_client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions or settings.kafka_topic_partitions,
            replication_factor=settings.kafka_replication_factor,
            config=spec.config(),
        )
        for spec in specs
        if spec.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, fut in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def kafka_ready(settings: Settings, timeout: float = 5.0) -> bool:
    """True when a broker answers a metadata request."""
    try:
        # log_level 0: a broker that is still starting is expected here, not worth a line per attempt
        md = AdminClient({**settings.kafka_client_config(), "log_level": 0}).list_topics(timeout=timeout)
        return bool(md.brokers)
    except KafkaException:
        return False


# ---------------------------------------------------------------- faust


class ProtobufCodec(faust.Codec):
    """faust codec for one protobuf message type."""

    def __init__(self, message_type: type[ProtoMessage], **kwargs: Any) -> None:
        self.message_type = message_type
        super().__init__(message_type=message_type, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return obj.SerializeToString()  # type: ignore[no-any-return]

    def _loads(self, s: bytes) -> Any:
        return self.message_type.FromString(s)


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile or "") or None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )


class FaustOutputs:
    """Output topics of a faust service; `send_all` returns once the broker acknowledged every record, so the
    input events are acknowledged (committed) only after their outputs are durable."""

    def __init__(self, app: faust.App, service: str, specs: Iterable[TopicSpec]) -> None:
        self.service = service
        self.topics = {s.name: app.topic(s.name, key_serializer="raw", value_serializer="raw") for s in specs}

    async def send_all(self, records: Iterable[tuple[str, bytes | None, Record]]) -> None:
        records = list(records)
        pending = [
            await self.topics[topic].send(key=key, value=msg.SerializeToString(), headers=record_headers(msg))
            for topic, key, msg in records
        ]
        await asyncio.gather(*pending)
        for topic, _, _ in records:
            PRODUCED.labels(self.service, topic).inc()

    async def send(self, topic: str, key: bytes | None, message: Record) -> None:
        await self.send_all([(topic, key, message)])


_READ_COMMITTED_APPS: set[str] = set()


def _read_committed_consumers() -> None:
    """faust reads uncommitted records unless it runs exactly-once itself; an app that consumes a topic written in
    Kafka transactions (the FHIR gateway's) must not see aborted ones. aiokafka takes the isolation level in
    `start()`, so setting it on the fresh consumer is enough."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "medstream_read_committed", False):
        return

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        if self.app.conf.id in _READ_COMMITTED_APPS:
            consumer._isolation_level = "read_committed"
        return consumer

    create.medstream_read_committed = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def make_faust_app(service: str, settings: Settings, read_committed: bool = False, **overrides: Any) -> faust.App:
    """A faust app wired to the configured cluster: at-least-once, acks=all, state under the state dir.
    `read_committed`: skip records of aborted Kafka transactions (for topics producers write transactionally)."""
    datadir = settings.state_dir / "faust" / service
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    conf: dict[str, Any] = {
        "broker": ";".join(f"kafka://{hp}" for hp in settings.kafka_bootstrap_servers.split(",")),
        "broker_credentials": faust_credentials(settings),
        "store": "memory://",  # tables recover from their changelog topics on start
        "datadir": str(datadir),
        "topic_partitions": settings.kafka_topic_partitions,
        "topic_replication_factor": settings.kafka_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.kafka_session_timeout_ms / 1000,
        "broker_heartbeat_interval": min(3.0, settings.kafka_session_timeout_ms / 3000),
        "producer_acks": -1,
        "web_enabled": False,
        "web_host": "127.0.0.1",
        "processing_guarantee": "at_least_once",
    }
    conf.update(overrides)
    if read_committed:
        _read_committed_consumers()
        _READ_COMMITTED_APPS.add(f"medstream-{service}")
    return faust.App(f"medstream-{service}", **conf)


def run_faust_worker(
    app: faust.App, service: str, settings: Settings, readiness: dict[str, Callable[[], Awaitable[bool]]]
) -> None:
    """Run a faust service: JSON logs, `/healthz` `/readyz` `/metrics` on the configured port, then the worker."""
    from faust.worker import Worker

    from services.common.telemetry import logging_config, start_health_server

    @app.task
    async def serve_health() -> None:
        await start_health_server(settings.http_host, settings.http_port, readiness)

    Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(service, settings.log_level),
        redirect_stdouts=False,
    ).execute_from_commandline()
