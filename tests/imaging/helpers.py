"""What the imaging integration tests share: sending a folder with dcmtk's storescu, and reading what the
pipeline published (reports, findings) and wrote to Neo4j."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from pathlib import Path

from medstream.events.v1 import fhir_pb2, finding_pb2

from services.cli.dcmtk import dcmtk
from services.common.graph import Graph
from services.common.topic_reader import read_messages
from services.common.topics import FHIR_WRITEBACK, FINDINGS


def storescu(folder: Path, port: int) -> None:
    args = [
        dcmtk("storescu"),
        "-aec",
        "MEDSTREAM",
        "-aet",
        "MODALITY",
        "+sd",
        "-nh",
        "127.0.0.1",
        str(port),
        str(folder),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def graph_counts(settings, patient: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        graph = Graph.connect(settings)
        try:
            records, _, _ = await graph.driver.execute_query(
                "MATCH (p:Patient {id: $p})-[r1:HAS_STUDY]->(st:Study)-[r2:HAS_SERIES]->(se:Series) "
                "OPTIONAL MATCH (se)-[r3:HAS_INSTANCE]->(i:Instance) "
                "WITH p, se, count(DISTINCT r1) + count(DISTINCT r2) AS upper, count(DISTINCT r3) AS r3, "
                "count(DISTINCT i) AS instances "
                "OPTIONAL MATCH (se)-[r4:HAS_FINDING]->(f:Finding)-[r5:SUGGESTS]->(c:Condition) "
                "OPTIONAL MATCH (p)-[r6:HAS_FINDING]->(f) "
                "RETURN upper, r3, instances, count(DISTINCT f) AS findings, count(DISTINCT r4) AS r4, "
                "count(DISTINCT r5) AS r5, count(DISTINCT r6) AS r6",
                p=patient,
                database_=graph.database,
            )
            return dict(records[0]) if records else {}
        finally:
            await graph.close()

    return asyncio.run(go())


def reports_for(settings, since, patient: str) -> list[dict]:
    events = read_messages(settings, FHIR_WRITEBACK.name, fhir_pb2.FhirResourceEvent, since)
    return [
        json.loads(e.resource_json)
        for e in events
        if e.patient_reference == f"Patient/{patient}" and e.resource_type == "DiagnosticReport"
    ]


def nearest(findings, point, within_mm: float = 10.0) -> finding_pb2.Finding | None:
    def centre(f: finding_pb2.Finding) -> tuple[float, float, float]:
        m = {x.name: x.value for x in f.measurements}
        return (m["centre_x"], m["centre_y"], m["centre_z"])

    best = min(findings, key=lambda f: math.dist(centre(f), point), default=None)
    return best if best is not None and math.dist(centre(best), point) <= within_mm else None


def findings_for(settings, since, patient: str) -> list[finding_pb2.Finding]:
    return [f for f in read_messages(settings, FINDINGS.name, finding_pb2.Finding, since) if f.patient_id == patient]
