"""The worker shell with plain values: intake and dead letters, outputs before state, waiting out a Triton outage."""

from __future__ import annotations

import asyncio

import pytest
from medstream.events.v1 import deadletter_pb2, vitals_pb2
from tritonclient.utils import InferenceServerException

from services.common.deadletter import SourceRecord
from services.common.topics import DEAD_LETTERS, FINDINGS
from services.common.triton import TritonUnavailable
from services.common.worker import Accepted, Intake, Shell, Step, batched

pytestmark = pytest.mark.unit


class Journal:
    """Records every send and every table write, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.table = JournalTable(self)

    async def send_all(self, records) -> None:  # type: ignore[no-untyped-def]
        for topic, key, message in records:
            self.events.append(("send", (topic, key, message)))


class JournalTable(dict):  # type: ignore[type-arg]
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def __setitem__(self, key: str, value: str) -> None:
        self.journal.events.append(("state", (key, value)))
        super().__setitem__(key, value)


def record(value: bytes, offset: int = 0) -> SourceRecord:
    return SourceRecord("medstream.vitals.snapshots.v1", 0, offset, b"p1", value)


def snapshot(snapshot_id: str) -> bytes:
    return vitals_pb2.VitalSignsSnapshot(snapshot_id=snapshot_id, patient_id="p1").SerializeToString()


INTAKE = Intake(vitals_pb2.VitalSignsSnapshot, lambda s: [] if s.snapshot_id else ["snapshot_id is required"])


async def test_outputs_are_sent_before_state_is_written():
    journal = Journal()
    shell = Shell("test", journal.send_all)

    async def handle(batch: list[Accepted[vitals_pb2.VitalSignsSnapshot]]) -> Step:
        return Step([(FINDINGS.name, b"p1", a.message) for a in batch], {"p1": f"{len(batch)} seen"})

    await shell.run_batch([record(snapshot("a")), record(snapshot("b"), 1)], INTAKE, handle, journal.table)
    kinds = [kind for kind, _ in journal.events]
    assert kinds == ["send", "send", "state"]
    assert journal.table == {"p1": "2 seen"}


async def test_invalid_and_undecodable_records_are_dead_lettered_and_the_rest_handled():
    journal = Journal()
    shell = Shell("test", journal.send_all)
    handled: list[str] = []

    async def handle(batch: list[Accepted[vitals_pb2.VitalSignsSnapshot]]) -> Step:
        handled.extend(a.message.snapshot_id for a in batch)
        return Step()

    records = [record(b"\xff\xff not protobuf"), record(snapshot(""), 1), record(snapshot("ok"), 2)]
    await shell.run_batch(records, INTAKE, handle, journal.table)
    assert handled == ["ok"]
    letters = [
        deadletter_pb2.DeadLetter.FromString(m.SerializeToString())
        for k, (t, _, m) in journal.events
        if k == "send" and t == DEAD_LETTERS.name
    ]
    reasons = [deadletter_pb2.DeadLetterReason.Name(letter.reason) for letter in letters]
    assert reasons == ["DEAD_LETTER_REASON_DECODE_ERROR", "DEAD_LETTER_REASON_VALIDATION_ERROR"]
    assert [letter.source_offset for letter in letters] == [0, 1]
    assert "snapshot_id is required" in letters[1].error_text


async def test_a_batch_with_nothing_valid_calls_no_step():
    journal = Journal()
    shell = Shell("test", journal.send_all)

    async def handle(batch: list[Accepted[vitals_pb2.VitalSignsSnapshot]]) -> Step:
        raise AssertionError("not called")

    await shell.run_batch([record(snapshot(""))], INTAKE, handle, journal.table)
    assert [t for _, (t, _, _) in journal.events] == [DEAD_LETTERS.name]


async def test_a_triton_outage_is_waited_out_with_nothing_published_meanwhile():
    journal = Journal()
    shell = Shell("test", journal.send_all, retry_base_s=0.001)
    attempts = 0

    async def infer() -> float:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            assert journal.events == []  # nothing sent, no state written, while Triton is down
            raise TritonUnavailable("connection refused") if attempts < 3 else OSError("reset")
        return 0.9

    async def handle(batch: list[Accepted[vitals_pb2.VitalSignsSnapshot]]) -> Step:
        risk = await shell.call(infer)
        return Step([(FINDINGS.name, b"p1", a.message) for a in batch], {"p1": str(risk)})

    await asyncio.wait_for(shell.run_batch([record(snapshot("a"))], INTAKE, handle, journal.table), 10)
    assert attempts == 4
    assert [kind for kind, _ in journal.events] == ["send", "state"]


async def test_a_model_refusal_dead_letters_the_inputs_for_a_replay():
    journal = Journal()
    shell = Shell("test", journal.send_all, retry_base_s=0.001)

    async def handle(batch: list[Accepted[vitals_pb2.VitalSignsSnapshot]]) -> Step:
        try:
            await shell.call(lambda: _refuse())
        except InferenceServerException as exc:
            await shell.refuse([a.record for a in batch], "toy_model", exc)
        return Step()

    await shell.run_batch([record(snapshot("a")), record(snapshot("b"), 1)], INTAKE, handle, journal.table)
    letters = [m for _, (t, _, m) in journal.events if t == DEAD_LETTERS.name]
    assert len(letters) == 2 and all("toy_model refused: unexpected shape" in m.error_text for m in letters)
    assert journal.table == {}


async def _refuse() -> None:
    raise InferenceServerException("unexpected shape", status="StatusCode.INVALID_ARGUMENT")


async def test_a_step_with_state_but_no_table_is_a_bug():
    shell = Shell("test", Journal().send_all)
    with pytest.raises(ValueError, match="needs a table"):
        await shell.publish(Step([], {"k": "v"}))


async def trickle(items: list[int], pause_every: int = 0, pause_s: float = 0.0, fail: Exception | None = None):  # type: ignore[no-untyped-def]
    for i, item in enumerate(items):
        if pause_every and i and i % pause_every == 0:
            await asyncio.sleep(pause_s)
        yield item
    if fail is not None:
        raise fail


async def test_batches_hand_on_every_item_once_in_order_however_they_arrive():
    """The regression behind the screening kill test: across full batches, partial ones and a slow handler, no item
    is skipped or handed on twice."""
    handled: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        handled.append(batch)
        await asyncio.sleep(0.01 if len(handled) % 3 else 0.05)

    items = list(range(1000))
    await asyncio.wait_for(batched(trickle(items, pause_every=37, pause_s=0.03), 64, 0.01, handle), 30)
    assert [i for b in handled for i in b] == items
    assert max(len(b) for b in handled) == 64
    assert any(len(b) < 64 for b in handled[:-1])  # pauses longer than within_s flush partial batches


async def test_a_partial_batch_is_handed_on_within_the_wait_while_the_source_idles():
    handled: list[list[int]] = []
    idle = asyncio.Event()

    async def source():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        await idle.wait()  # never set: the source stays open with nothing to read

    async def handle(batch: list[int]) -> None:
        handled.append(batch)

    task = asyncio.create_task(batched(source(), 256, 0.05, handle))
    await asyncio.sleep(0.5)
    assert handled == [[1, 2]]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_batch_stops_the_loop_before_later_items_are_handed_on():
    handled: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        if 5 in batch:
            raise RuntimeError("boom")
        handled.append(batch)

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(batched(trickle(list(range(20)), pause_every=4, pause_s=0.05), 4, 0.01, handle), 10)
    assert [i for b in handled for i in b] == [0, 1, 2, 3]


async def test_the_source_failing_surfaces_after_what_it_gave_is_handed_on():
    handled: list[int] = []

    async def handle(batch: list[int]) -> None:
        handled.extend(batch)

    with pytest.raises(ValueError, match="broken"):
        await asyncio.wait_for(batched(trickle([1, 2, 3], fail=ValueError("broken")), 8, 0.01, handle), 10)
    assert handled == [1, 2, 3]
