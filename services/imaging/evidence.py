"""Evidence objects of an analysed series: a DICOM SEG of the lesions on the source images, a TID 1500 SR that
references it, and a key-image PNG of the top lesion, written to the blob store before anything points to them."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import uuid
from collections.abc import Sequence

import numpy as np
import pydicom
from medstream.events.v1 import common_pb2, finding_pb2

from services.common.blobs import BlobStore
from services.imaging import dicom_outputs
from services.imaging.findings import _NAMESPACE
from services.imaging.postprocess import Candidate
from services.imaging.preprocess import Volume
from services.imaging.priors import Comparison
from services.imaging.routes import Route


def evidence_objects(
    datasets: Sequence[pydicom.Dataset],
    volume: Volume,
    grid: Volume,
    labels: np.ndarray,
    route: Route,
    found: Sequence[Candidate],
    comparison: Comparison | None,
    model: common_pb2.ModelRef,
    base: str,
    now: dt.datetime,
) -> list[tuple[str, str, bytes, str]]:
    """(kind, name, bytes, content type) of the DICOM SEG, the TID 1500 SR and a key image of the top finding
    (pure; names carry no identifiers, only a hash of the revision)."""
    changes = comparison.changes if comparison else [None] * len(found)
    findings = [
        dicom_outputs.SegmentedFinding.from_candidate(k, c, ch)
        for k, (c, ch) in enumerate(zip(found, changes, strict=True), start=1)
    ]
    folder = str(uuid.uuid5(_NAMESPACE, f"evidence|{base}"))
    names = {"algorithm_name": model.name, "algorithm_version": model.version}
    on_sources = dicom_outputs.labels_on_sources(labels, grid.affine, datasets)
    seg = dicom_outputs.segmentation(datasets, on_sources, findings, kind=route.evidence, seed=base, now=now, **names)
    sr = dicom_outputs.measurement_report(datasets, seg, findings, kind=route.evidence, seed=base, now=now, **names)
    out = [("dicom-sr", f"{folder}/sr.dcm", dicom_bytes(sr), "application/dicom")]
    if seg is not None:
        out.insert(0, ("dicom-seg", f"{folder}/seg.dcm", dicom_bytes(seg), "application/dicom"))
        on_volume = dicom_outputs.labels_on_volume(labels, grid.affine, volume.affine, _shape3(volume.array))
        if (on_volume == 1).any():
            caption = dicom_outputs.key_image_caption(findings[0], kind=route.evidence, **names)
            png = dicom_outputs.key_image_png(
                volume.array, on_volume, 1, window=route.display_window(volume), caption=caption
            )
            out.append(("key-image", f"{folder}/key-image-1.png", png, "image/png"))
    return out


def _shape3(array: np.ndarray) -> tuple[int, int, int]:
    z, y, x = array.shape
    return int(z), int(y), int(x)


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def store_evidence(
    store: BlobStore, objects: Sequence[tuple[str, str, bytes, str]]
) -> list[finding_pb2.EvidenceRef]:
    refs = []
    for kind, name, data, content_type in objects:
        uri = await asyncio.to_thread(store.put_output, name, data, content_type)
        refs.append(finding_pb2.EvidenceRef(kind=kind, uri=uri, content_type=content_type))
    return refs
