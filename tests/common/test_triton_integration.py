import asyncio

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from services.cli.stack import TRITON_METRICS_PORT
from services.common.triton import CircuitBreaker, CircuitOpen, TritonClient, TritonUnavailable

pytestmark = pytest.mark.integration
X = np.array([[15, 97, 0, 36.8, 125, 72, 0], [28, 88, 1, 39.5, 85, 135, 1]], dtype=np.float32)


def counters() -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{TRITON_METRICS_PORT}/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(name + "{") and 'model="deterioration_risk"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["nv_inference_count"], values["nv_inference_exec_count"]


def test_model_is_served_and_reports_its_version(local_stack):
    async def go():
        client = TritonClient(local_stack.triton_grpc_url, "test")
        try:
            assert await client.ready("deterioration_risk")
            result = await client.infer("deterioration_risk", {"VITALS": X}, ["RISK"])
            return result
        finally:
            await client.close()

    result = asyncio.run(go())
    risk = result.outputs["RISK"][:, 0]
    assert result.model_version == "1" and risk.shape == (2,)
    assert risk[0] < 0.1 < 0.9 < risk[1]  # normal vitals vs. NEWS2 12


def test_concurrent_requests_are_batched_by_the_server(local_stack):
    async def go():
        client = TritonClient(local_stack.triton_grpc_url, "test", max_concurrency=16)
        try:
            await asyncio.gather(*(client.infer("deterioration_risk", {"VITALS": X[:1]}, ["RISK"]) for _ in range(400)))
        finally:
            await client.close()

    count0, exec0 = counters()
    asyncio.run(go())
    count1, exec1 = counters()
    assert count1 - count0 == 400
    assert (count1 - count0) / (exec1 - exec0) > 1.5  # the dynamic batcher merged requests


def test_unreachable_server_retries_then_opens_the_circuit():
    async def go():
        client = TritonClient(
            "127.0.0.1:1", "test", timeout_s=0.5, retries=2, breaker=CircuitBreaker(threshold=3, cooldown_s=60)
        )
        try:
            with pytest.raises(TritonUnavailable):
                await client.infer("deterioration_risk", {"VITALS": X}, ["RISK"])
            assert client.breaker.state == "open"
            with pytest.raises(CircuitOpen):
                await client.infer("deterioration_risk", {"VITALS": X}, ["RISK"])
            assert not await client.ready()
        finally:
            await client.close()

    asyncio.run(go())


def test_a_wrong_request_is_not_retried(local_stack):
    async def go():
        client = TritonClient(local_stack.triton_grpc_url, "test", retries=3)
        try:
            with pytest.raises(InferenceServerException):  # wrong width: never transient
                await client.infer("deterioration_risk", {"VITALS": X[:, :3]}, ["RISK"])
            assert client.breaker.failures == 0
        finally:
            await client.close()

    asyncio.run(go())


def test_many_rows_are_split_into_requests_the_model_accepts(local_stack):
    async def go():
        client = TritonClient(local_stack.triton_grpc_url, "test")
        try:
            return await client.infer_rows("deterioration_risk", "VITALS", np.repeat(X, 500, axis=0), "RISK")
        finally:
            await client.close()

    risk, version = asyncio.run(go())  # 1,000 rows > max_batch_size 256
    assert risk.shape == (1000, 1) and version == "1"
