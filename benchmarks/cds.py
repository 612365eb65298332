"""`make bench-cds`: decision-support latency and throughput on this machine's CPU.

- FHIR bundle accepted by the gateway -> suggestion published by the decision-support worker, p50/p99, one case
  at a time and under a burst (cases/s);
- CDS Hooks patient-view request latency p50/p99, sequential and with 4 concurrent clients;
- the engine alone against Triton: cases/s one case per call (no batching) vs 32 per call, with and without the
  note-sentence explanations.
Starts its own gateway, worker and CDS Hooks service against the running local stack (started if needed).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from typing import Any

import httpx
import numpy as np
from confluent_kafka import Consumer, TopicPartition

from benchmarks.wearables import row, stack_up, start, stop
from services.cds.engine import Engine
from services.cds.state import PatientState, apply
from services.common.config import Settings
from services.common.sentences import embed
from services.common.topic_reader import end_offsets
from services.common.topics import CDS_SUGGESTIONS
from services.common.triton import TritonClient
from services.fhir_gateway.validation import check_body, resolve_references
from training.cds.samples import PROFILES, case_bundle, patient_id

GATEWAY, WORKER, HOOKS = 18183, 18184, 18185
FHIR_AUTH = {"Authorization": "Bearer dev-ehr-token", "Content-Type": "application/fhir+json"}
HOOKS_URL = f"http://127.0.0.1:{HOOKS}/cds-services/medstream-differential-diagnosis"
HOOKS_AUTH = {"Authorization": "Bearer dev-cds-hooks-token"}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:.0f} ms, p99 {pct(values, 99) * 1000:.0f} ms"


class SuggestionWatcher:
    """Publish time (record timestamp) of each suggestion, by patient id, from the topic's current end."""

    def __init__(self, settings: Settings) -> None:
        self.published: dict[str, float] = {}
        self._consumer = Consumer(
            {**settings.kafka_client_config(), "group.id": "medstream-bench-cds", "enable.auto.commit": False}
        )
        ends = end_offsets(settings, CDS_SUGGESTIONS.name)
        self._consumer.assign([TopicPartition(CDS_SUGGESTIONS.name, p, o) for p, o in ends.items()])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error() or not msg.key():
                continue
            patient = msg.key().decode().removeprefix("Patient/")
            self.published.setdefault(patient, msg.timestamp()[1] / 1000)

    def wait(self, patients: set[str], timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not patients <= set(self.published):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(patients - set(self.published))} suggestions missing")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def bundles(n: int, seed: int) -> list[dict[str, Any]]:
    return [case_bundle(PROFILES[i % len(PROFILES)], seed=seed + i, index=i) for i in range(n)]


def post(client: httpx.Client, bundle: dict[str, Any]) -> float:
    resp = client.post(f"http://127.0.0.1:{GATEWAY}/fhir/r4", content=json.dumps(bundle), headers=FHIR_AUTH)
    resp.raise_for_status()
    return time.time()


def bench_pipeline(settings: Settings, seed: int) -> None:
    watcher = SuggestionWatcher(settings)
    try:
        with httpx.Client(timeout=60) as client:
            warm = bundles(3, seed)
            for b in warm:
                post(client, b)
            watcher.wait({patient_id(b) for b in warm})

            one_by_one = []
            for b in bundles(40, seed + 1000):
                accepted = post(client, b)
                watcher.wait({patient_id(b)})
                one_by_one.append(watcher.published[patient_id(b)] - accepted)
            row(
                "FHIR bundle accepted -> suggestion published, one case at a time",
                ms(one_by_one),
                "40 carebundle cases (~48 resources + a note each); gateway + worker + Triton",
            )

            burst = bundles(120, seed + 2000)
            accepted_at: dict[str, float] = {}
            lock = threading.Lock()

            def sender(part: list[dict[str, Any]]) -> None:
                with httpx.Client(timeout=60) as own:
                    for b in part:
                        t = post(own, b)
                        with lock:
                            accepted_at[patient_id(b)] = t

            started = time.time()
            threads = [threading.Thread(target=sender, args=(burst[k::4],)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            watcher.wait(set(accepted_at))
            done = max(watcher.published[p] for p in accepted_at)
            latencies = [watcher.published[p] - accepted_at[p] for p in accepted_at]
            row(
                "burst of 120 cases from 4 clients: throughput",
                f"{len(burst) / (done - started):.1f} cases/s",
                f"accepted -> published {ms(latencies)}",
            )
    finally:
        watcher.close()


def hooks_request(bundle: dict[str, Any]) -> dict[str, Any]:
    resolved = resolve_references(bundle)
    resources = [e["resource"] for e in resolved["entry"]]
    patient = patient_id(resolved)

    def search(kind: str) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources if r["resourceType"] == kind],
        }

    return {
        "hook": "patient-view",
        "hookInstance": f"bench-{patient}",
        "context": {"userId": "Practitioner/bench", "patientId": patient},
        "prefetch": {
            "patient": next(r for r in resources if r["resourceType"] == "Patient"),
            "observations": search("Observation"),
            "conditions": search("Condition"),
            "medications": search("MedicationRequest"),
            "notes": search("DocumentReference"),
        },
    }


async def bench_hooks(seed: int) -> None:
    requests = [hooks_request(b) for b in bundles(60, seed + 3000)]
    async with httpx.AsyncClient(timeout=60) as client:
        for r in requests[:3]:
            (await client.post(HOOKS_URL, json=r, headers=HOOKS_AUTH)).raise_for_status()
        sequential = []
        for r in requests:
            t0 = time.perf_counter()
            (await client.post(HOOKS_URL, json=r, headers=HOOKS_AUTH)).raise_for_status()
            sequential.append(time.perf_counter() - t0)
        row("CDS Hooks patient-view, one client", ms(sequential), "60 requests; prefetch of ~48 resources + note")

        concurrent: list[float] = []

        async def client_loop(part: list[dict[str, Any]]) -> None:
            for r in part:
                t0 = time.perf_counter()
                (await client.post(HOOKS_URL, json=r, headers=HOOKS_AUTH)).raise_for_status()
                concurrent.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop(requests[k::4]) for k in range(4)))
        rate = len(requests) / (time.perf_counter() - started)
        row("CDS Hooks patient-view, 4 concurrent clients", ms(concurrent), f"{rate:.1f} requests/s")


async def bench_engine(settings: Settings, seed: int) -> None:
    states = []
    for b in bundles(64, seed + 4000):
        state = PatientState()
        for a in check_body(b).accepted:
            if a.patient_reference:
                apply(state, a.resource_type, a.resource)
        states.append(state)
    triton = TritonClient(settings.triton_grpc_url, "bench-cds")
    for sentences in (True, False):
        engine = Engine(triton, embed, explain_sentences=sentences)
        engine.warm_up()
        cases = [engine.case(s) for s in states]
        await engine.evaluate(cases[:4])
        t0 = time.perf_counter()
        for case in cases:
            await engine.evaluate([case])
        single = len(cases) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for k in range(0, len(cases), 32):
            result = await engine.evaluate(cases[k : k + 32])
        batched = len(cases) / (time.perf_counter() - t0)
        what = "with" if sentences else "without"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in result[0].timings_ms.items())
        row(
            f"engine {what} sentence explanations: 1 case per call vs 32",
            f"{single:.1f} vs {batched:.1f} cases/s",
            f"ms per case at 32: {stages}",
        )
    await triton.close()


def main() -> None:
    settings = stack_up()
    seed = random.randrange(1, 2**30)
    print("| measurement | result | note |\n|---|---|---|", flush=True)
    procs = [
        start("fhir-gateway", GATEWAY, settings),
        start("decision-support", WORKER, settings),
        start("cds-hooks", HOOKS, settings),
    ]
    try:
        bench_pipeline(settings, seed)
        asyncio.run(bench_hooks(seed))
    finally:
        for proc in procs:
            stop(proc)
    asyncio.run(bench_engine(settings, seed))


if __name__ == "__main__":
    main()
