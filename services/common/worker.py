"""The one worker shell for the faust services: intake and dead letters, model calls that wait out outages,
outputs before state, timing. A service's `app.py` declares its topics and steps; this runs them.

`Shell` is the loop's logic with the I/O passed in (tested with plain values in tests/common/test_worker.py);
`FaustWorker` wires it to a faust app, its output topics, tables and a Triton client, built from settings with
no I/O until `run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message as ProtoMessage
from tritonclient.utils import InferenceServerException

from services.common.config import Settings
from services.common.deadletter import PROCESSING_ERROR, DeadLetters, SourceRecord
from services.common.kafka import FaustOutputs, Record, make_faust_app, run_faust_worker
from services.common.service import retry_until_done
from services.common.telemetry import PROCESSING_SECONDS
from services.common.topics import DEAD_LETTERS, TopicSpec
from services.common.triton import TritonClient, TritonUnavailable, triton_client

log = logging.getLogger(__name__)
M = TypeVar("M", bound=ProtoMessage)
T = TypeVar("T")
Output = tuple[str, bytes | None, Record]
SendAll = Callable[[Iterable[Output]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Accepted(Generic[M]):
    """A consumed record that decoded and validated, with its message."""

    record: SourceRecord
    message: M


@dataclass
class Step:
    """What one batch produced: records to publish, then the state entries to write once they are durable."""

    outputs: list[Output] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Intake(Generic[M]):
    """What a topic carries: its protobuf type and the contract check (problems; empty when valid)."""

    message_type: type[M]
    validate: Callable[[M], list[str]] = lambda _: []


class Shell:
    """Everything a worker does around its own logic, with the I/O passed in."""

    def __init__(self, service: str, send_all: SendAll, *, retry_base_s: float = 0.2) -> None:
        self.service = service
        self.send_all = send_all
        self.retry_base_s = retry_base_s
        self.dead_letters = DeadLetters(service, lambda key, letter: send_all([(DEAD_LETTERS.name, key, letter)]))

    async def intake(self, records: Iterable[SourceRecord], intake: Intake[M]) -> list[Accepted[M]]:
        """Decode and validate each record; the ones that fail are dead-lettered with their reason."""
        accepted = []
        for record in records:
            message = await self.dead_letters.accept(record, intake.message_type, intake.validate)
            if message is not None:
                accepted.append(Accepted(record, message))
        return accepted

    async def call(
        self,
        call: Callable[[], Awaitable[T]],
        what: str = "triton",
        retry_on: tuple[type[BaseException], ...] = (TritonUnavailable, OSError),
    ) -> T:
        """A dependency call that waits out outages (nothing is committed meanwhile). A model refusing the request
        itself (InferenceServerException) is not retried: the caller decides (see `refuse`)."""
        return await retry_until_done(call, what, retry_on=retry_on, base_s=self.retry_base_s)

    async def refuse(self, records: Iterable[SourceRecord], model: str, exc: InferenceServerException) -> None:
        """The model refused the request (a model/config mismatch): no retry can fix it, so the inputs go to the
        dead-letter topic for a replay once the model is fixed."""
        for record in records:
            await self.dead_letters.publish(record, PROCESSING_ERROR, f"{model} refused: {exc.message()}")

    async def publish(self, step: Step, table: MutableMapping[str, str] | None = None) -> None:
        """Outputs first, then state: a crash in between replays the inputs, which rebuild the same state and
        publish the same ids again (downstream MERGEs and consumers deduplicate on them)."""
        await self.send_all(step.outputs)
        if step.state and table is None:
            raise ValueError("a step with state needs a table")
        for key, value in step.state.items():
            table[key] = value  # type: ignore[index]

    async def run_batch(
        self,
        records: Sequence[SourceRecord],
        intake: Intake[M],
        handle: Callable[[list[Accepted[M]]], Awaitable[Step]],
        table: MutableMapping[str, str] | None = None,
    ) -> None:
        """One consumer batch: intake, the service's step, outputs, state, timing."""
        if not records:
            return
        started = time.perf_counter()
        accepted = await self.intake(records, intake)
        step = await handle(accepted) if accepted else Step()
        await self.publish(step, table)
        PROCESSING_SECONDS.labels(self.service, records[0].topic).observe(
            (time.perf_counter() - started) / len(records)
        )


async def batched(
    source: AsyncIterator[T], batch_max: int, within_s: float, handle: Callable[[list[T]], Awaitable[None]]
) -> None:
    """Hand `source`'s items to `handle` in order, in batches of up to `batch_max`; a batch waits at most `within_s`
    after its first item for more. One batch at a time, each item in exactly one batch; an error from `handle` ends
    the loop (the items of that batch and after are not handed on, so not acknowledged).

    faust's `Stream.take_events` is not used: with faust-streaming 0.15.3 (Cython iterator) it paired a value with
    another record's event across a full-buffer flush, so one record per partition was acknowledged without being
    handled and another handled twice (lost outcomes in the screening kill test)."""
    queue: asyncio.Queue[T] = asyncio.Queue(maxsize=batch_max)  # read ahead one batch while one is handled
    loop = asyncio.get_running_loop()

    async def read() -> None:
        async for item in source:
            await queue.put(item)

    reader = asyncio.create_task(read())
    try:
        while True:
            batch: list[T] = []
            deadline = None
            while len(batch) < batch_max:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    deadline = deadline or loop.time() + within_s
                    continue
                if reader.done():
                    break
                timeout = None if deadline is None else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    break
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    batch.append(getter.result())
                    deadline = deadline or loop.time() + within_s
                else:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if getter.done() and not getter.cancelled():  # an item arrived as it was cancelled
                        batch.append(getter.result())
            if batch:
                await handle(batch)
            elif reader.done():
                reader.result()  # the source's error, if it failed
                return
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


class FaustWorker:
    """A faust service: app, output topics, dead letters, tables, Triton; agents added with `batches`."""

    def __init__(
        self,
        service: str,
        settings: Settings,
        outputs: Iterable[TopicSpec],
        *,
        read_committed: bool = False,
        triton_timeout_s: float | None = None,
        triton_concurrency: int | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.app = make_faust_app(service, settings, read_committed=read_committed)
        self.outputs = FaustOutputs(self.app, service, (*outputs, DEAD_LETTERS))
        self.shell = Shell(service, self.outputs.send_all)
        self._triton: TritonClient | None = None
        self._triton_options = (triton_timeout_s, triton_concurrency)
        self.before_run: list[Callable[[], None]] = []  # slow start-up work (loading models) before consuming

    @property
    def triton(self) -> TritonClient:
        if self._triton is None:  # the gRPC channel belongs to the worker's event loop: made on first use
            self._triton = triton_client(self.settings, self.service, *self._triton_options)
        return self._triton

    def table(self, name: str) -> MutableMapping[str, str]:
        """A per-key state table, recovered from its changelog after a restart. Written after each batch (outside
        per-event iteration), so its partition comes from the key's partitioner: murmur2 like the producers of
        the input topics, which keeps state and input co-partitioned."""
        table: MutableMapping[str, str] = self.app.Table(name, key_type=str, value_type=str, use_partitioner=True)
        return table

    def batches(
        self,
        topic: TopicSpec,
        intake: Intake[M],
        handle: Callable[[list[Accepted[M]]], Awaitable[Step]],
        *,
        batch_max: int,
        within_s: float,
        table: MutableMapping[str, str] | None = None,
        concurrency: int = 1,
        around: Callable[[], Any] | None = None,
    ) -> None:
        """Consume `topic` in batches of up to `batch_max` records or `within_s` seconds, through the shell.
        `around`: an async context manager factory held for each batch (e.g. a lock shared with a timer)."""
        channel = self.app.topic(topic.name, key_serializer="raw", value_serializer="raw")

        async def agent(stream: Any) -> None:  # faust.Stream
            stream.enable_acks = False  # an event is acked once its batch's outputs are durable, not when read

            async def run(events: list[Any]) -> None:
                records = [SourceRecord.from_faust(e) for e in events]
                if around is None:
                    await self.shell.run_batch(records, intake, handle, table)
                else:
                    async with around():
                        await self.shell.run_batch(records, intake, handle, table)
                for event in events:
                    await stream.ack(event)

            await batched(stream.events(), batch_max, within_s, run)

        self.app.agent(channel, name=f"{self.service}.{topic.name}", concurrency=concurrency)(agent)

    def run(self, readiness: Mapping[str, Callable[[], Awaitable[bool]]]) -> None:
        """JSON logs, `/healthz` `/readyz` `/metrics`, then the faust worker until SIGTERM."""
        for prepare in self.before_run:
            prepare()
        run_faust_worker(self.app, self.service, self.settings, dict(readiness))
