"""`make bench-research`: clinical-research services on this machine's CPU.

- Population replay: FHIR resources/s the gateway accepts for Synthea patient bundles (validated, published per
  resource in one Kafka transaction with its receipt), next to posting the same bundles with the same client to a
  plain aiohttp endpoint that only parses the JSON (the floor);
- patient event -> updated trial matches, p50/p99: a new patient's bundle accepted by the gateway -> its first
  match record published by the trial-matching worker;
- MedicationRequest -> adverse-drug-reaction assessment, p50/p99: a statin order accepted -> its Finding published;
- re-matching cost when one trial is amended across 10 k patients: the worker's own protocol step over a table of
  10 k patients' timelines (copies of Synthea patients under new ids), in process.
Starts its own gateway and workers against the running local stack (started if needed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiohttp import web
from confluent_kafka import Consumer, TopicPartition
from medstream.events.v1 import research_pb2

from benchmarks.wearables import row, stack_up, start, stop
from services.cli.population import generate, renumber_patients, replay
from services.cli.trials import load_protocols, publish
from services.common.config import Settings
from services.common.deadletter import SourceRecord
from services.common.topic_reader import end_offsets
from services.common.topics import FHIR_EVENTS, FINDINGS, TRIAL_MATCHES
from services.common.worker import Accepted
from services.research.timeline import from_bundle
from services.research.trials.app import PatientTrials, Trials, handle_protocols, rematch

GATEWAY, FLOOR, TRIALS, ADR = 18191, 18192, 18193, 18194
FHIR_AUTH = {"Authorization": "Bearer dev-ehr-token", "Content-Type": "application/fhir+json"}


def ms(values: list[float]) -> str:
    a = np.asarray(values) * 1000
    return f"p50 {np.percentile(a, 50):.0f} ms, p99 {np.percentile(a, 99):.0f} ms"


class FirstRecord:
    """Broker timestamp of the first record per key on a topic, from the topic's current end."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.seen: dict[str, float] = {}
        self._consumer = Consumer(
            {**settings.kafka_client_config(), "group.id": f"medstream-bench-{topic}", "enable.auto.commit": False}
        )
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in end_offsets(settings, topic).items()])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is not None and not msg.error() and msg.key():
                self.seen.setdefault(msg.key().decode().removeprefix("Patient/"), msg.timestamp()[1] / 1000)

    def wait(self, key: str, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while key not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no record for {key}")
            time.sleep(0.005)
        return self.seen[key]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


# ---------------------------------------------------------------- population replay
def _floor_server(port: int) -> None:
    async def parse_only(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())  # parse, and answer as a FHIR server would: one entry per resource
        entries = [
            {"response": {"status": "201 Created", "location": f"{e['resource']['resourceType']}/{i}"}}
            for i, e in enumerate(doc["entry"])
        ]
        return web.json_response({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/fhir/r4", parse_only)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def bench_replay(paths: list[Path]) -> None:
    floor = multiprocessing.Process(target=_floor_server, args=(FLOOR,), daemon=True)
    floor.start()
    time.sleep(1.5)
    try:
        entries = sum(len(json.loads(p.read_bytes())["entry"]) for p in paths)
        size = sum(p.stat().st_size for p in paths) / 1e6
        plain = asyncio.run(replay(paths, f"http://127.0.0.1:{FLOOR}"))
        ours = asyncio.run(replay(paths, f"http://127.0.0.1:{GATEWAY}"))
        assert not ours.refused, ours.refused[:3]
        note = f"{len(paths)} Synthea patients, {entries:,} resources, {size:.0f} MB, 2 bundles in flight"
        row("population replay: FHIR gateway", f"{ours.resources_per_s:,.0f} resources/s", note)
        row("population replay: plain aiohttp, JSON parse only (floor)", f"{plain.resources_per_s:,.0f} resources/s")
        retry = asyncio.run(replay(paths[:2], f"http://127.0.0.1:{GATEWAY}"))
        row("the same 2 bundles again (a client retry)", f"{retry.seconds:.2f} s", "answered from receipts")
    finally:
        floor.terminate()


# ---------------------------------------------------------------- stream latencies
def start_at_end(settings: Settings, group: str, topic: str) -> None:
    """Commit `group`'s offsets at the topic's end, so a worker measures new events, not the stack's backlog (what
    an operator does when a new service should begin with what arrives from now on)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        ends = end_offsets(settings, topic)
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False)
    finally:
        consumer.close()


def _bundle(*resources: dict[str, Any]) -> str:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in resources
            ],
        }
    )


def diabetic(pid: str, year: int = 1960) -> list[dict[str, Any]]:
    ref = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": f"{year}-03-01"},
        {
            "resourceType": "Condition",
            "id": f"{pid}-dm",
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "44054006",
                        "display": "Diabetes mellitus type 2 (disorder)",
                    }
                ]
            },
            "subject": ref,
            "onsetDateTime": "2015-06-01T00:00:00Z",
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-a1c",
            "status": "final",
            "code": {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "4548-4",
                        "display": "Hemoglobin A1c/Hemoglobin.total in Blood",
                    }
                ]
            },
            "subject": ref,
            "effectiveDateTime": "2024-11-01T00:00:00Z",
            "valueQuantity": {"value": 8.2, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-egfr",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3", "display": "eGFR"}]},
            "subject": ref,
            "effectiveDateTime": "2024-11-01T00:00:00Z",
            "valueQuantity": {
                "value": 48,
                "unit": "mL/min/{1.73_m2}",
                "system": "http://unitsofmeasure.org",
                "code": "mL/min/{1.73_m2}",
            },
        },
    ]


def statin_order(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"{pid}-statin",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "312961",
                    "display": "Simvastatin 20 MG Oral Tablet",
                }
            ]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2024-12-01T00:00:00Z",
    }


def first_record_latency(settings: Settings, topic: str, requests: Callable[[str], list[str]], n: int) -> list[float]:
    """For n new patients one at a time (after 3 warm-ups): POST each of `requests(patient)` to the gateway, then
    time from the last one's acceptance to the patient's first record on `topic`."""
    watcher = FirstRecord(settings, topic)
    latencies = []
    try:
        with httpx.Client(timeout=60, headers=FHIR_AUTH) as client:
            for i in range(n + 3):
                pid = f"bench-{uuid.uuid4().hex[:10]}"
                for body in requests(pid):
                    client.post(f"http://127.0.0.1:{GATEWAY}/fhir/r4", content=body).raise_for_status()
                accepted = time.time()
                seen = watcher.wait(pid, timeout_s=600 if i == 0 else 120)  # the first waits out any backlog
                if i >= 3:
                    latencies.append(seen - accepted)
    finally:
        watcher.close()
    return latencies


def bench_matches(settings: Settings, n: int) -> None:
    latencies = first_record_latency(settings, TRIAL_MATCHES.name, lambda pid: [_bundle(*diabetic(pid))], n)
    row("patient event -> updated trial matches", ms(latencies), f"{n} new diabetic patients one at a time, all trials")


def bench_adr(settings: Settings, n: int) -> None:
    def requests(pid: str) -> list[str]:
        return [_bundle(*diabetic(pid, 1950)), _bundle(statin_order(pid))]

    latencies = first_record_latency(settings, FINDINGS.name, requests, n)
    row(
        "MedicationRequest -> ADR assessment published",
        ms(latencies),
        f"{n} statin starts one at a time (target p99 < 500 ms)",
    )


# ---------------------------------------------------------------- re-matching
def bench_rematch(paths: list[Path], patients: int) -> None:
    bases = [from_bundle(json.loads(p.read_bytes())) for p in paths]
    protocols = load_protocols()
    trials = Trials()
    for protocol in protocols:
        trials.update(protocol)
    packed = []
    for base in bases:  # each distinct patient matched once; the table holds copies of its state under new ids
        state = PatientTrials(base)
        rematch(base.patient_id, state, trials.parsed.values(), None, 0)
        packed.append(state.to_json())
    table = {f"Patient/p{i}": packed[i % len(packed)] for i in range(patients)}
    amended = dict(protocols[0], version=int(protocols[0].get("version", 1)) + 1)
    msg = research_pb2.TrialProtocol(
        trial_id=amended["id"], version=amended["version"], protocol_json=json.dumps(amended).encode()
    )
    record = SourceRecord("medstream.trials.protocols.v1", 0, 0, amended["id"].encode(), msg.SerializeToString())
    mb = sum(len(v) for v in table.values()) / 1e6
    started = time.perf_counter()
    step = handle_protocols([Accepted(record, msg)], table, trials, partitions=1)
    seconds = time.perf_counter() - started
    row(
        f"one trial amended: re-match {patients:,} patients",
        f"{seconds:.1f} s ({patients / seconds:,.0f} patients/s)",
        f"in process, the worker's protocol step incl. state decode/encode ({mb:,.0f} MB of state); "
        f"{len(step.outputs)} records out",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=12, help="Synthea patients for the replay")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--events", type=int, default=40, help="one-at-a-time events per latency measurement")
    parser.add_argument("--rematch", type=int, default=10_000, help="patients in the re-matching table")
    args = parser.parse_args()
    settings = stack_up()
    print("| measurement | result | notes |\n|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = renumber_patients(generate(args.patients, args.seed, Path(tmp)))
        bench_rematch(paths, args.rematch)
        publish(settings, load_protocols())
        procs = [start("fhir-gateway", GATEWAY, settings)]
        try:
            bench_replay(paths)
            for service in ("trial-matching", "adverse-drug-reactions"):
                start_at_end(settings, f"medstream-{service}", FHIR_EVENTS.name)
            procs.append(start("trial-matching", TRIALS, settings))
            procs.append(start("adverse-drug-reactions", ADR, settings))
            bench_matches(settings, args.events)
            bench_adr(settings, args.events)
        finally:
            for p in procs:
                stop(p)


if __name__ == "__main__":
    main()
