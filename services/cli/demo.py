"""`medstream demo`: the spine end to end on the local stack with the bundled sample vitals, then decision
support: the five carebundle profiles through the FHIR gateway to explained CDS Hooks suggestions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import httpx
from medstream.events.v1 import alert_pb2, deadletter_pb2, fhir_pb2, finding_pb2
from rich.console import Console

from services.cli.replay import SAMPLE_VITALS, parse_vitals
from services.common.config import Settings
from services.common.graph import Graph
from services.common.kafka import EventProducer
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import ALERTS, DEAD_LETTERS, FINDINGS, VITALS_SNAPSHOTS
from services.deterioration.assess import validate

SERVICE_PORTS = {
    "deterioration": 8081,
    "graph-writer": 8082,
    "fhir-gateway": 8083,
    "decision-support": 8084,
    "imaging-gateway": 8085,
    "imaging": 8086,
    "imaging-dispatcher": 8087,
    "molecule-generation": 8088,
    "virtual-screening": 8089,
}
DEMO_PACS_PORT = 11113  # dcmtk's storescp standing in for the hospital PACS; the gateway's DIMSE port is 11112
FHIR_AUTH = {"Authorization": "Bearer dev-ehr-token", "Content-Type": "application/fhir+json"}


def start_services(
    settings: Settings, names: Iterable[str] = SERVICE_PORTS, env: dict[str, dict[str, str]] | None = None
) -> dict[str, subprocess.Popen[bytes]]:
    """`medstream run NAME` for each name on its demo port, with `env[NAME]` added to its environment."""
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in names:
        port = SERVICE_PORTS[name]
        extra = (env or {}).get(name, {})
        env_ = {**os.environ, "MEDSTREAM_HTTP_PORT": str(port), "MEDSTREAM_STATE_DIR": str(settings.state_dir), **extra}
        with open(logs / f"{name}.log", "ab") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", name],
                env=env_,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    return procs


def stop_services(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def graph_count(settings: Settings, query: str, **params: Any) -> int:
    """The `n` a counting Cypher query returns from the local Neo4j."""

    async def go() -> int:
        graph = Graph.connect(settings)
        try:
            records, _, _ = await graph.driver.execute_query(query, params, database_=graph.database)
            return int(records[0]["n"])
        finally:
            await graph.close()

    return asyncio.run(go())


def run_demo(settings: Settings, console: Console, timeout_s: float) -> dict[str, Any]:
    snapshots = parse_vitals(SAMPLE_VITALS.read_text().splitlines())
    valid = [s for s in snapshots if not validate(s)]
    patients = sorted({s.patient_id for s in valid})
    before = {t: end_offsets(settings, t) for t in (FINDINGS.name, ALERTS.name, DEAD_LETTERS.name)}
    procs = start_services(settings, ["deterioration", "graph-writer"])
    try:
        console.print(
            f"replaying {len(snapshots)} vital-sign snapshots ({len(snapshots) - len(valid)} invalid) "
            "and 1 undecodable record"
        )
        producer = EventProducer(settings, "demo")
        for s in snapshots:
            producer.send_sync(VITALS_SNAPSHOTS.name, s.patient_id.encode(), s)
        producer.send_sync(VITALS_SNAPSHOTS.name, b"demo-garbage", b"\x08\x96\x01 this is not a snapshot \xff")
        producer.close()
        expected_dead = len(snapshots) - len(valid) + 1
        deadline = time.monotonic() + timeout_s
        findings: list[finding_pb2.Finding] = []
        in_graph = dead = 0
        letters: list[deadletter_pb2.DeadLetter] = []
        while time.monotonic() < deadline:
            findings = read_messages(settings, FINDINGS.name, finding_pb2.Finding, before[FINDINGS.name])
            letters = read_messages(settings, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, before[DEAD_LETTERS.name])
            dead = len(letters)
            in_graph = graph_count(
                settings,
                "MATCH (p:Patient)-[:HAS_FINDING]->(f:Finding {kind: 'deterioration-risk'}) WHERE p.id IN $patients "
                "RETURN count(DISTINCT f) AS n",
                patients=patients,
            )
            if len(findings) >= len(valid) and dead >= expected_dead and in_graph >= len(valid):
                break
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"service {name} exited; see {settings.state_dir / 'logs' / name}.log")
            time.sleep(1.0)
        alerts = read_messages(settings, ALERTS.name, alert_pb2.Alert, before[ALERTS.name])
    finally:
        stop_services(procs)
    ok = len(findings) >= len(valid) and dead >= expected_dead and in_graph >= len(valid)
    top = sorted(findings, key=lambda f: -f.score)[:3]
    return {
        "ok": ok,
        "snapshots_sent": len(snapshots) + 1,
        "findings_published": len(findings),
        "alerts_published": len(alerts),
        "dead_lettered": dead,
        "dead_letter_reasons": dict(Counter(deadletter_pb2.DeadLetterReason.Name(d.reason) for d in letters)),
        "findings_in_graph_for_sample_patients": in_graph,
        "highest_risk": [f.summary for f in top],
        "model": f"{top[0].model.name} v{top[0].model.version}" if top else None,
    }


def wait_ready(procs: dict[str, subprocess.Popen[bytes]], settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for name, proc in procs.items():
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service {name} exited; see {settings.state_dir / 'logs' / name}.log")
            try:
                if httpx.get(f"http://127.0.0.1:{SERVICE_PORTS[name]}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service {name} not ready after {timeout_s:.0f} s")
            time.sleep(0.5)


def run_cds_demo(settings: Settings, console: Console, timeout_s: float) -> dict[str, Any]:
    """The five carebundle profiles (with a synthetic note each) -> FHIR gateway -> decision support."""
    import json

    from services.common.topic_reader import read_records
    from services.common.topics import CDS_SUGGESTIONS
    from training.cds.samples import PROFILES, case_bundle, patient_id

    seed = int(time.time()) % 1_000_000  # fresh patients each run: the same bundles again are not a change
    bundles = {profile: case_bundle(profile, seed=seed, index=i) for i, profile in enumerate(PROFILES)}
    patients = {patient_id(b): profile for profile, b in bundles.items()}
    before = end_offsets(settings, CDS_SUGGESTIONS.name)
    procs = start_services(settings, ["fhir-gateway", "decision-support", "graph-writer"])
    found: dict[str, dict[str, Any]] = {}
    try:
        wait_ready(procs, settings, timeout_s)
        console.print(f"posting {len(bundles)} carebundle transaction Bundles (one per profile) with a note each")
        for bundle in bundles.values():
            resp = httpx.post(
                f"http://127.0.0.1:{SERVICE_PORTS['fhir-gateway']}/fhir/r4",
                content=json.dumps(bundle),
                headers=FHIR_AUTH,
                timeout=30,
            )
            resp.raise_for_status()
        deadline = time.monotonic() + timeout_s
        while len(found) < len(patients) and time.monotonic() < deadline:
            for key, value, _ in read_records(settings, CDS_SUGGESTIONS.name, before):
                patient = (key or b"").decode().removeprefix("Patient/")
                if patient in patients:
                    found[patient] = json.loads(value)
            time.sleep(1.0)
    finally:
        stop_services(procs)
    suggestions = {}
    for patient, body in found.items():
        top = body["cards"][0] if body["cards"] else None
        explained = top["extension"]["medstream"] if top else {}
        suggestions[patients[patient]] = {
            "top_card": top["summary"] if top else None,
            "model": f"{body['model']['name']} v{body['model']['version']}",
            "labs_behind_it": [a["lab"] for a in explained.get("labAttributions", [])][:3],
            "phenotypes_found": len(body["inputs"]["phenotypes"]),
        }
    return {"ok": len(found) == len(patients), "cases": len(patients), "suggestions": suggestions}


def run_imaging_demo(settings: Settings, console: Console, timeout_s: float) -> dict[str, Any]:
    """A synthetic chest CT (80 DICOM files, two nodules of known size) sent by dcmtk's storescu to the imaging
    gateway -> series assembled -> lung-nodule model on Triton -> findings, DiagnosticReport, SEG/SR/key image
    and graph -> the SEG and SR sent on to a PACS (dcmtk's storescp) by the dispatcher."""
    import json
    import tempfile
    from pathlib import Path

    import pydicom

    from services.cli.dcmtk import dcmtk
    from services.common.topics import FHIR_WRITEBACK
    from services.imaging_dispatcher.destinations import DimseDestination
    from training.imaging.synthetic_ct import generate_ct, write_series

    ct = generate_ct(int(time.time()) % 100_000 + 500_000, n_nodules=2)  # a fresh patient each run
    before = {t: end_offsets(settings, t) for t in (FINDINGS.name, FHIR_WRITEBACK.name)}
    env = {
        "imaging-gateway": {"MEDSTREAM_DICOM_TRUST_IMAGES_IN_ACQUISITION": "true"},  # the files carry their count
        "imaging-dispatcher": {
            "MEDSTREAM_DISPATCH_DESTINATIONS": json.dumps([f"demo-pacs=dicom://DEMOPACS@127.0.0.1:{DEMO_PACS_PORT}"])
        },
    }
    with tempfile.TemporaryDirectory(prefix="medstream-demo-") as tmp:
        series, pacs_dir = Path(tmp) / "ct", Path(tmp) / "pacs"
        pacs_dir.mkdir()
        write_series(ct, series)
        (series / "ground_truth.json").unlink(missing_ok=True)
        pacs = subprocess.Popen(
            [dcmtk("storescp"), "-aet", "DEMOPACS", "-od", str(pacs_dir), str(DEMO_PACS_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs = start_services(settings, ["imaging-gateway", "imaging", "graph-writer", "imaging-dispatcher"], env)
        report: dict[str, Any] = {}
        received: list[str] = []
        try:
            wait_ready(procs, settings, timeout_s)
            if not DimseDestination("pacs", "127.0.0.1", DEMO_PACS_PORT, "DEMOPACS", "DEMO", 5.0).echo():
                raise RuntimeError(f"the demo PACS (storescp) is not answering on port {DEMO_PACS_PORT}")
            console.print(
                f"sending a synthetic chest CT ({len(list(series.iterdir()))} files, "
                f"{len(ct.nodules)} nodules) with storescu to the imaging gateway"
            )
            subprocess.run(
                [
                    dcmtk("storescu"),
                    "-aec",
                    settings.dicom_ae_title,
                    "-aet",
                    "DEMO",
                    "+sd",
                    "-nh",
                    "127.0.0.1",
                    str(settings.dicom_dimse_port),
                    str(series),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not (report and len(received) >= len(dicom_forms(report))):
                events = read_messages(
                    settings, FHIR_WRITEBACK.name, fhir_pb2.FhirResourceEvent, before[FHIR_WRITEBACK.name]
                )
                subject = f"Patient/{ct.patient_id}"
                reports = [
                    json.loads(e.resource_json)
                    for e in events
                    if e.resource_type == "DiagnosticReport" and e.patient_reference == subject
                ]
                report = reports[-1] if reports else {}
                # The demo PACS keeps its consumer group between runs: it also gets what other runs reported since.
                objects = [pydicom.dcmread(f, stop_before_pixels=True) for f in pacs_dir.iterdir()]
                received = sorted(o.Modality for o in objects if o.PatientID == ct.patient_id)
                time.sleep(1.0)
            findings = [
                f
                for f in read_messages(settings, FINDINGS.name, finding_pb2.Finding, before[FINDINGS.name])
                if f.patient_id == ct.patient_id
            ]
        finally:
            stop_services(procs)
            pacs.terminate()
            pacs.wait(10)
    return {
        # SR always; SEG when there is a lesion to segment
        "ok": bool(report) and len(findings) == len(report["contained"]) and len(received) == len(dicom_forms(report)),
        "patient": ct.patient_id,
        "true_nodules_mm": [round(n.diameter_mm, 1) for n in ct.nodules],
        "findings": [f.summary for f in findings],
        "report_conclusion": report.get("conclusion"),
        "evidence": [f"{p['title']}: {p['url']}" for p in report.get("presentedForm", [])],
        "received_by_demo_pacs": received,
    }


def dicom_forms(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report.get("presentedForm", []) if f.get("contentType") == "application/dicom"]
