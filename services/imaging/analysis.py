"""Imaging analysis, the orchestration: a completed, routed series -> its route's preparation -> the route's model
on Triton -> lesion candidates -> comparison with the prior study -> evidence objects -> findings, report, alert and
graph upserts (services/imaging/findings.py). The routes (services/imaging/routes/) say what differs per analysis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from medstream.events.v1 import common_pb2, dicom_pb2
from prometheus_client import Counter

from services.common.blobs import BlobStore, BlobStoreUnavailable, read_blob
from services.common.config import Settings
from services.common.graph import Graph
from services.common.triton import TritonClient
from services.imaging.evidence import evidence_objects, store_evidence
from services.imaging.findings import Context, Outputs, base_key, outputs
from services.imaging.patches import stitch, tile
from services.imaging.postprocess import Candidate, labelled_candidates
from services.imaging.preprocess import Volume, load_series, rescale
from services.imaging.priors import Comparison, PriorStudy, find_prior, measure_change, study_date
from services.imaging.routes import ROUTES, Route

log = logging.getLogger(__name__)
EVIDENCE_FAILURES = Counter(
    "medstream_imaging_evidence_failures_total", "Series reported without SEG/SR/key image", ["service", "route"]
)


class SeriesUnreadable(ValueError):
    """The series' instances cannot be read or assembled into a volume (the reason is in the message)."""


def read_instances(uris: Sequence[str], settings: Settings | None = None) -> tuple[list[pydicom.Dataset], Volume]:
    """The series' instances from the blob store (file:// or s3://) -> their datasets and one volume in HU (CT)
    or normalised intensity (MR). A blob store that is down raises BlobStoreUnavailable (wait and retry)."""
    try:
        datasets: list[pydicom.Dataset] = [pydicom.dcmread(io.BytesIO(read_blob(uri, settings))) for uri in uris]
        return datasets, rescale(load_series(datasets))
    except BlobStoreUnavailable:
        raise
    except (OSError, ValueError, AttributeError, KeyError) as exc:  # missing blobs, pydicom and preprocess errors
        raise SeriesUnreadable(f"{type(exc).__name__}: {exc}"[:500]) from exc


async def segment(triton: TritonClient, route: Route, grid: Volume) -> tuple[np.ndarray, str, int]:
    """Probability map from Triton: every patch of the series sent at once (split to the model's batch limit,
    the server's dynamic batcher combines them). Returns (probabilities, model version, patches)."""
    tiles = await asyncio.to_thread(tile, grid.array, route.patch, route.stride, route.keep)
    if not tiles.origins:
        return np.zeros(grid.array.shape, dtype=np.float32), await triton.model_version(route.contract.name), 0
    # requests of 16 patches (the config's preferred batch), so the dynamic batcher can combine them
    out, version = await triton.infer_contract(route.contract, {"PATCH": tiles.patches}, max_batch=16)
    return await asyncio.to_thread(stitch, tiles, out["PROB"]), version, len(tiles.origins)


@dataclass(frozen=True)
class Dependencies:
    """What an analysis talks to: Triton (segmentation), Neo4j (prior studies), the blob store (instances in,
    evidence out)."""

    triton: TritonClient
    graph: Graph
    store: BlobStore
    settings: Settings | None = None


async def compare_with_prior(
    deps: Dependencies,
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    grid: Volume,
    found: Sequence[Candidate],
    date: dt.date | None,
) -> Comparison | None:
    """Find the prior study in the graph, read and register it, match lesions. Neo4j errors propagate (the
    caller waits and retries); an unreadable prior is reported without comparison rather than failing."""
    if not series.patient_id or date is None:
        return None
    prior: PriorStudy | None = await find_prior(
        deps.graph, series.patient_id, series.study_instance_uid, date, route.name
    )
    if prior is None:
        return None
    try:
        _, prior_volume = await asyncio.to_thread(read_instances, prior.blob_uris, deps.settings)
    except SeriesUnreadable:
        return None
    prior_grid = await asyncio.to_thread(route.prepare, prior_volume)
    days = float((date - prior.study_date).days)
    try:
        return await asyncio.to_thread(measure_change, grid, prior_grid, found, prior, days)
    except (RuntimeError, ValueError) as exc:  # SimpleITK refuses volumes it cannot register
        log.warning("prior study not compared", extra={"reason": f"{type(exc).__name__}: {exc}"[:300]})
        return None


async def analyse(
    deps: Dependencies, series: dicom_pb2.DicomSeriesComplete, now: dt.datetime | None = None
) -> tuple[Outputs, dict[str, float]]:
    """Read, preprocess, segment, measure, compare with the prior, store the evidence; returns the outputs and
    stage timings in seconds. The evidence is stored before the caller publishes anything that points to it."""
    route = ROUTES[series.route]
    now = now or dt.datetime.now(dt.UTC)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    datasets, volume = await asyncio.to_thread(read_instances, [i.blob_uri for i in series.instances], deps.settings)
    grid = await asyncio.to_thread(route.prepare, volume)
    t1 = loop.time()
    prob, version, patches = await segment(deps.triton, route, grid)
    t2 = loop.time()
    found, labels = await asyncio.to_thread(
        labelled_candidates, prob, grid.affine, grid.spacing, route.threshold, route.min_volume_mm3
    )
    date = study_date(datasets[0].get("StudyDate"))
    t3 = loop.time()
    comparison = await compare_with_prior(deps, series, route, grid, found, date)
    t4 = loop.time()
    model = common_pb2.ModelRef(name=route.contract.name, version=version)
    evidence_error = ""
    try:
        objects = await asyncio.to_thread(
            evidence_objects,
            datasets,
            volume,
            grid,
            labels,
            route,
            found,
            comparison,
            model,
            base_key(series, model),
            now,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # Findings are still published; the report says evidence is missing and the log says why.
        log.warning(
            "evidence not produced", extra={"route": route.name, "reason": f"{type(exc).__name__}: {exc}"[:300]}
        )
        EVIDENCE_FAILURES.labels("imaging", route.name).inc()
        objects, evidence_error = [], f"{type(exc).__name__}: {exc}"[:300]
    refs = await store_evidence(deps.store, objects)
    t5 = loop.time()
    result = outputs(series, route, found, model, now, Context(date, comparison, tuple(refs), evidence_error))
    t6 = loop.time()
    timings = {
        "preprocess": t1 - t0,
        "inference": t2 - t1,
        "postprocess": (t3 - t2) + (t6 - t5),
        "prior": t4 - t3,
        "evidence": t5 - t4,
        "patches": float(patches),
    }
    return result, timings
