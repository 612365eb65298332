"""Imaging service: DICOM instance arrivals in; findings, reports, alerts and graph updates out.

Assembly: medstream.dicom.instances.v1 --> per-series state (faust table) --(expected count reached, or quiet
    period)--> medstream.dicom.series.v1 (one record per revision, routed), medstream.graph.mutations.v1
    (Patient-Study-Series-Instance, MERGEd on UIDs), dead letters for undecodable or incomplete claim checks.
Analysis: medstream.dicom.series.v1 --> the route's preparation and model on Triton (services/imaging/routes/)
    --> medstream.findings.v1, medstream.alerts.v1, medstream.fhir.writeback.v1 (DiagnosticReport +
    Observations), medstream.graph.mutations.v1, dead letters for unreadable series.
"""

from __future__ import annotations

from medstream.events.v1 import dicom_pb2

from services.common.blobs import blob_store
from services.common.config import Settings, get_settings
from services.common.graph import Graph
from services.common.topics import ALERTS, DICOM_INSTANCES, DICOM_SERIES, FHIR_WRITEBACK, FINDINGS, GRAPH_MUTATIONS
from services.common.worker import FaustWorker, Intake
from services.imaging.analysis import Dependencies
from services.imaging.stages import Analysis, Assembly, validate_arrival, validate_series

SERVICE = "imaging"


def build(settings: Settings) -> tuple[FaustWorker, Graph]:
    worker = FaustWorker(SERVICE, settings, (DICOM_SERIES, GRAPH_MUTATIONS, FINDINGS, ALERTS, FHIR_WRITEBACK))
    series_table = worker.table("imaging-series-state")
    assembly = Assembly(worker.shell, series_table, settings.imaging_quiet_s, settings.imaging_state_retention_s)
    worker.batches(
        DICOM_INSTANCES,
        Intake(dicom_pb2.DicomInstanceArrival, validate_arrival),
        assembly.handle,
        batch_max=256,
        within_s=0.2,
        table=series_table,
        around=lambda: assembly.lock,
    )

    @worker.app.timer(interval=1.0)
    async def quiet_periods() -> None:
        async with assembly.lock:
            await assembly.complete_quiet()

    graph = Graph.connect(settings)  # reads prior studies; writes go through medstream.graph.mutations.v1
    analysis = Analysis(worker.shell, Dependencies(worker.triton, graph, blob_store(settings), settings))
    worker.batches(
        DICOM_SERIES,
        Intake(dicom_pb2.DicomSeriesComplete, validate_series),
        analysis.handle,
        batch_max=1,
        within_s=1.0,
        concurrency=2,
    )
    return worker, graph


def main() -> None:
    worker, graph = build(get_settings())
    worker.run({"triton": worker.triton.ready, "neo4j": graph.ready})
