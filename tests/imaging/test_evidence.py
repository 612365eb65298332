"""The evidence an analysis stores next to its findings: a DICOM SEG and TID 1500 SR of the lesions on the source
series, and a key image of the top one, byte-identical when a replay analyses the same revision again."""

from __future__ import annotations

import asyncio
import datetime as dt
from io import BytesIO

import numpy as np
import pydicom
import pytest
from medstream.events.v1 import common_pb2
from PIL import Image

from services.common.blobs import LocalBlobStore, read_blob
from services.imaging.evidence import dicom_bytes, evidence_objects, store_evidence
from services.imaging.postprocess import labelled_candidates
from services.imaging.preprocess import load_series, rescale
from services.imaging.routes import ROUTES
from training.imaging import lung
from training.imaging.synthetic_ct import generate_ct, slice_datasets

pytestmark = pytest.mark.unit
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
MODEL = common_pb2.ModelRef(name="lung_nodule", version="1")


@pytest.fixture(scope="module")
def analysed():
    ct = generate_ct(7, n_nodules=2)
    datasets = [pydicom.dcmread(BytesIO(dicom_bytes(ds))) for ds in slice_datasets(ct)]  # as read from the blob store
    volume = rescale(load_series(datasets))
    grid = lung.prepare(volume)
    truth = lung.training_sample(ct).mask  # the known nodules on the model grid stand in for the model's output
    found, labels = labelled_candidates(truth, grid.affine, grid.spacing, 0.5, 8.0)
    return ct, datasets, volume, grid, found, labels


def test_seg_sr_and_key_image_describe_the_lesions_on_the_source_series(analysed, tmp_path):
    ct, datasets, volume, grid, found, labels = analysed
    assert len(found) == 2
    objects = evidence_objects(datasets, volume, grid, labels, ROUTES["lung-nodule"], found, None, MODEL, "b|1", NOW)
    assert [kind for kind, *_ in objects] == ["dicom-seg", "dicom-sr", "key-image"]
    assert all(ct.patient_id not in name and ct.series_instance_uid not in name for _, name, *_ in objects)

    refs = asyncio.run(store_evidence(LocalBlobStore(tmp_path), objects))
    stored = {r.kind: read_blob(r.uri) for r in refs}
    seg = pydicom.dcmread(BytesIO(stored["dicom-seg"]))
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.series_instance_uid
    sr = pydicom.dcmread(BytesIO(stored["dicom-sr"]))
    assert sr.Modality == "SR" and sr.PatientID == ct.patient_id  # the patient module comes from the images
    image = np.asarray(Image.open(BytesIO(stored["key-image"])).convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.sum() > 20  # the top lesion outlined


def test_a_replay_writes_the_same_bytes_and_no_lesion_still_gives_a_report(analysed):
    _, datasets, volume, grid, found, labels = analysed
    args = (datasets, volume, grid, labels, ROUTES["lung-nodule"], found, None, MODEL, "b|1", NOW)
    assert evidence_objects(*args) == evidence_objects(*args)
    none = evidence_objects(
        datasets, volume, grid, np.zeros_like(labels), ROUTES["lung-nodule"], [], None, MODEL, "b|2", NOW
    )
    assert [kind for kind, *_ in none] == ["dicom-sr"]
