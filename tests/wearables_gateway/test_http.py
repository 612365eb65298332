"""The HTTP transport's answers, with a recording producer (pure unit test; Kafka is covered in integration)."""

import gzip
import json
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.config import Settings
from services.common.topics import WEARABLE_RECEIPTS, WEARABLE_SAMPLES
from services.wearables_gateway.app import DEV_REGISTRY, Gateway, http_app
from services.wearables_gateway.registry import load_registry
from services.wearables_gateway.templates import load_templates

pytestmark = pytest.mark.unit
AUTH = {"Authorization": "Bearer dev-acme-token"}


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic, key, message, headers=None):
        self.sent.append((topic, key))
        return 0, len(self.sent)


def body(key: str = "b-1", **extra):
    ms = int(datetime.now(UTC).timestamp() * 1000)
    readings = [{"device": "acme-0001", "ts": ms, "hr": 71}, {"device": "acme-0001", "ts": ms, "hr": 999}]
    return {"idempotency_key": key, "device_type": "acme-band-2", "readings": readings, **extra}


@pytest.fixture
async def client():
    settings = Settings(wearables_max_body_bytes=64 * 1024)
    producer = RecordingProducer()
    gateway = Gateway(settings, load_registry(DEV_REGISTRY), load_templates(), producer)  # type: ignore[arg-type]
    async with TestClient(TestServer(http_app(gateway, settings))) as c:
        c.producer = producer
        yield c


async def test_accepts_and_reports_per_sample_rejections(client):
    resp = await client.post("/v1/wearables/batches", json=body(), headers=AUTH)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["accepted"] == 1 and answer["duplicate"] is False
    assert answer["rejected"][0]["index"] == 1 and "outside" in answer["rejected"][0]["reason"]
    assert [t for t, _ in client.producer.sent] == [WEARABLE_SAMPLES.name, WEARABLE_RECEIPTS.name]


async def test_retry_with_same_key_publishes_nothing_and_gives_the_same_answer(client):
    batch = body("k")
    first = await (await client.post("/v1/wearables/batches", json=batch, headers=AUTH)).json()
    sent = len(client.producer.sent)
    second = await (await client.post("/v1/wearables/batches", json=batch, headers=AUTH)).json()
    assert second["duplicate"] is True and second["accepted"] == first["accepted"]
    assert len(client.producer.sent) == sent
    other = await client.post("/v1/wearables/batches", json=body("k", readings=[]), headers=AUTH)
    assert other.status == 422 and "different batch" in (await other.json())["error"]


async def test_gzip_body_is_accepted(client):
    data = gzip.compress(json.dumps(body("gz")).encode())
    resp = await client.post(
        "/v1/wearables/batches",
        data=data,
        headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status == 200 and (await resp.json())["accepted"] == 1


@pytest.mark.parametrize(
    "headers, data, status",
    [
        ({}, json.dumps(body()), 401),
        ({"Authorization": "Bearer nope"}, json.dumps(body()), 401),
        ({**AUTH, "Content-Type": "text/plain"}, json.dumps(body()), 415),
        ({**AUTH, "Content-Type": "application/json"}, "{not json", 400),
        ({**AUTH, "Content-Type": "application/json"}, json.dumps({"readings": "x"}), 400),
        ({**AUTH, "Content-Type": "application/json"}, json.dumps(body(device_type="toaster")), 422),
        ({**AUTH, "Content-Type": "application/json"}, json.dumps(body(idempotency_key="")), 422),
        ({**AUTH, "Content-Type": "application/json"}, json.dumps(body(pad="x" * 70_000)), 413),
    ],
)
async def test_refusals(client, headers, data, status):
    resp = await client.post("/v1/wearables/batches", data=data, headers=headers)
    assert resp.status == status
    assert "error" in await resp.json()


async def test_vendor_cannot_write_for_another_vendors_device(client):
    ms = int(datetime.now(UTC).timestamp() * 1000)
    payload = {
        "idempotency_key": "x",
        "device_type": "acme-band-2",
        "readings": [{"device": "gmx-0001", "ts": ms, "hr": 70}],
    }
    answer = await (await client.post("/v1/wearables/batches", json=payload, headers=AUTH)).json()
    assert answer["accepted"] == 0 and "not registered" in answer["rejected"][0]["reason"]
