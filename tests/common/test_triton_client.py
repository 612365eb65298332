import numpy as np
import pytest

from services.common.service import backoff_delay
from services.common.triton import CircuitBreaker, InferResult, TritonClient

pytestmark = pytest.mark.unit


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown():
    b = CircuitBreaker(threshold=3, cooldown_s=10)
    for t in range(2):
        b.failure(now=t)
    assert b.allow(now=2) and b.state == "closed"
    b.failure(now=3)
    assert b.state == "open" and not b.allow(now=5)
    assert b.allow(now=13)  # one trial call after the cool-down
    b.success()
    assert b.state == "closed" and b.failures == 0


def test_backoff_is_bounded_and_grows():
    delays = [backoff_delay(i, base_s=0.1, cap_s=1.0) for i in range(8)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert all(d <= 0.1 * 2**i for i, d in enumerate(delays))
    floored = [backoff_delay(i, base_s=0.2, cap_s=10.0, floor_s=0.2) for i in range(40)]
    assert all(0.2 <= d <= 10.0 for d in floored)


def _fake_client(versions: list[str]) -> tuple[TritonClient, list[tuple[dict[str, int], str]]]:
    """A client whose `infer` answers PROBS = the first column of A and DOUBLE = 2 x that, from `versions` in turn."""
    client = TritonClient.__new__(TritonClient)  # no channel: only infer_many's splitting and merging are tested
    calls: list[tuple[dict[str, int], str]] = []
    answers = iter(versions)

    async def infer(model, inputs, outputs, version=""):
        calls.append(({name: len(a) for name, a in inputs.items()}, version))
        first = inputs["A"][:, :1]
        produced = {"PROBS": first, "DOUBLE": 2 * first}
        return InferResult({name: produced[name] for name in outputs}, version or next(answers))

    client.infer = infer  # type: ignore[method-assign]
    return client, calls


async def test_infer_many_splits_rows_into_requests_and_merges_every_output_in_order():
    client, calls = _fake_client(["3"] * 3)
    a = np.arange(250 * 2, dtype=np.float32).reshape(250, 2)
    b = np.zeros((250, 5), dtype=np.float32)
    outputs, version = await client.infer_many("m", {"A": a, "B": b}, ["PROBS", "DOUBLE"], max_batch=100)
    assert [sizes for sizes, _ in calls] == [{"A": 100, "B": 100}, {"A": 100, "B": 100}, {"A": 50, "B": 50}]
    assert version == "3" and set(outputs) == {"PROBS", "DOUBLE"}
    np.testing.assert_array_equal(outputs["PROBS"], a[:, :1])
    np.testing.assert_array_equal(outputs["DOUBLE"], 2 * a[:, :1])


async def test_infer_many_asks_the_newest_version_again_when_chunks_disagree():
    client, calls = _fake_client(["1", "2"])
    outputs, version = await client.infer_many("m", {"A": np.ones((4, 1), dtype=np.float32)}, ["PROBS"], max_batch=2)
    assert version == "2" and outputs["PROBS"].shape == (4, 1)
    assert [v for _, v in calls] == ["", "", "2", "2"]


async def test_infer_rows_is_infer_many_with_one_input_and_output():
    client, _ = _fake_client(["1"] * 2)
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    risk, version = await client.infer_rows("m", "A", rows, "PROBS", max_batch=2)
    assert version == "1"
    np.testing.assert_array_equal(risk, rows[:, :1])


@pytest.mark.parametrize("inputs", [{"A": np.ones((3, 1)), "B": np.ones((2, 1))}, {"A": np.ones((0, 1))}, {}])
async def test_infer_many_refuses_ragged_or_empty_inputs(inputs):
    client, calls = _fake_client([])
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        await client.infer_many("m", inputs, ["PROBS"])
    assert calls == []
