"""Async Triton gRPC client: deadlines, bounded concurrency, retries with backoff and a circuit breaker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from services.common.config import Settings
from services.common.model_contract import ModelContract
from services.common.service import backoff_delay
from services.common.telemetry import INFERENCE_SECONDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferResult:
    outputs: dict[str, np.ndarray]
    model_version: str  # the version that answered, as Triton reports it


class TritonUnavailable(RuntimeError):
    """Triton could not answer (down, overloaded, timing out) after the retries: wait and try again later."""


class CircuitOpen(TritonUnavailable):
    """Triton failed repeatedly; calls fail fast until the cool-down ends."""


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; lets one trial call through after `cooldown_s`."""

    threshold: int = 5
    cooldown_s: float = 5.0
    failures: int = 0
    opened_at: float | None = None

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        return now - self.opened_at >= self.cooldown_s  # half-open: one trial

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = now

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else "open"


class TritonClient:
    """One client per process; `infer` is safe to call from many tasks at once."""

    def __init__(
        self,
        url: str,
        service: str,
        *,
        timeout_s: float = 10.0,
        max_concurrency: int = 16,
        retries: int = 4,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.url = url
        self.service = service
        self.timeout_s = timeout_s
        self.retries = retries
        self.breaker = breaker or CircuitBreaker()
        # Bounded concurrency: enough requests in flight for the dynamic batcher, not an unbounded queue.
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client = grpcclient.InferenceServerClient(url=url)

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, model: str | None = None) -> bool:
        try:
            if model is None:
                return bool(await self._client.is_server_ready())
            return bool(await self._client.is_model_ready(model))
        except InferenceServerException:
            return False

    async def model_version(self, model: str) -> str:
        """The highest ready version of `model`."""
        index = await self._client.get_model_repository_index(as_json=True)
        versions = [
            m["version"] for m in index.get("models", []) if m.get("name") == model and m.get("state") == "READY"
        ]
        if not versions:
            raise InferenceServerException(f"model {model} is not ready")
        return max(versions, key=int)

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str], version: str = ""
    ) -> InferResult:
        """One inference with retries on transient errors; raises CircuitOpen while Triton keeps failing."""
        for attempt in range(self.retries + 1):
            if not self.breaker.allow(time.monotonic()):
                raise CircuitOpen(f"triton circuit open after {self.breaker.failures} failures")
            try:
                result = await self._infer_once(model, inputs, outputs, version)
                self.breaker.success()
                return result
            except InferenceServerException as exc:
                if not _transient(exc):
                    raise
                self.breaker.failure(time.monotonic())
                if attempt == self.retries:
                    raise TritonUnavailable(str(exc.message())) from exc
                log.warning(
                    "triton call failed, retrying",
                    extra={"model": model, "attempt": attempt + 1, "error": str(exc.message())[:200]},
                )
                await asyncio.sleep(backoff_delay(attempt, base_s=0.1, cap_s=5.0))
        raise AssertionError("unreachable")

    async def infer_contract(
        self,
        contract: ModelContract,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        max_batch: int | None = None,
    ) -> tuple[dict[str, np.ndarray], str]:
        """`infer_many` for a model's contract: the inputs are checked against it first (ContractViolation), and
        requests are split at `max_batch` rows, at most its max_batch_size. Returns ({output: all rows}, version)."""
        contract.check_inputs(inputs)
        rows = min(max_batch or contract.max_batch_size, contract.max_batch_size)
        return await self.infer_many(contract.name, inputs, outputs or contract.output_names, rows)

    async def infer_rows(
        self, model: str, input_name: str, rows: np.ndarray, output: str, max_batch: int = 64
    ) -> tuple[np.ndarray, str]:
        """`infer_many` with one input and one output. Returns (outputs, version)."""
        outputs, version = await self.infer_many(model, {input_name: rows}, [output], max_batch)
        return outputs[output], version

    async def infer_many(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str], max_batch: int = 64
    ) -> tuple[dict[str, np.ndarray], str]:
        """Infer many rows (every input has the same number) as requests of at most `max_batch` rows (the model's
        max_batch_size bounds one request); they go out concurrently, so the server's dynamic batcher can combine
        them. Returns ({output name: all rows}, version); every row comes from that one model version."""
        counts = sorted({len(array) for array in inputs.values()})
        if len(counts) != 1 or counts[0] == 0:
            raise ValueError(f"every input needs the same, non-zero number of rows; got {counts}")
        n = counts[0]
        chunks = [{name: array[i : i + max_batch] for name, array in inputs.items()} for i in range(0, n, max_batch)]
        results = await asyncio.gather(*(self.infer(model, c, outputs) for c in chunks))
        versions = {r.model_version for r in results}
        if len(versions) > 1:  # a new version was loaded mid-call: ask the newest one for every chunk
            newest = max(versions, key=int)
            results = await asyncio.gather(*(self.infer(model, c, outputs, version=newest) for c in chunks))
        merged = {name: np.concatenate([r.outputs[name] for r in results]) for name in outputs}
        return merged, results[0].model_version

    async def _infer_once(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str], version: str
    ) -> InferResult:
        triton_inputs = []
        for name, array in inputs.items():
            item = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            triton_inputs.append(item)
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        async with self._slots:
            started = time.perf_counter()
            response = await self._client.infer(
                model, triton_inputs, model_version=version, outputs=requested, client_timeout=self.timeout_s
            )
            INFERENCE_SECONDS.labels(self.service, model).observe(time.perf_counter() - started)
        return InferResult({name: response.as_numpy(name) for name in outputs}, response.get_response().model_version)


def triton_client(
    settings: Settings, service: str, timeout_s: float | None = None, max_concurrency: int | None = None
) -> TritonClient:
    """The settings' client; a service whose model is slow per call (a sampler) passes its own deadline and how many
    calls it keeps in flight, so queued calls do not time out behind each other."""
    return TritonClient(
        settings.triton_grpc_url,
        service,
        timeout_s=timeout_s or settings.triton_timeout_s,
        max_concurrency=max_concurrency or settings.triton_max_concurrency,
        retries=settings.triton_retries,
    )


def _transient(exc: InferenceServerException) -> bool:
    status = (exc.status() or "").upper()
    text = str(exc.message() or "").lower()
    return any(s in status for s in ("UNAVAILABLE", "DEADLINE", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED")) or (
        "unavailable" in text or "deadline" in text or "connect" in text
    )
