"""`make bench-dispatch`: the imaging dispatcher sending SEG and SR to a PACS on this machine.

- one report at a time: report published on the write-back topic -> both objects stored by the PACS, p50/p99,
  with storescp as dcmtk runs it by default and with its TCP_NODELAY switch (the dispatcher turns Nagle off);
- a burst of reports: objects/s and MB/s through the dispatcher (Kafka read, blob read, C-STORE association per
  report) vs dcmtk's storescu sending the same files to the same storescp in one association, as a ratio.
The PACS is dcmtk's storescp. Starts its own dispatcher against the running local stack (started if needed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from medstream.events.v1 import common_pb2, fhir_pb2

from benchmarks.wearables import row, stack_up, start, stop
from services.cli.dcmtk import dcmtk
from services.common.blobs import LocalBlobStore
from services.common.config import Settings
from services.common.kafka import EventProducer
from services.common.topics import FHIR_WRITEBACK
from services.imaging.evidence import dicom_bytes, evidence_objects, store_evidence
from services.imaging.routes import ROUTES
from services.imaging.postprocess import labelled_candidates
from services.imaging.preprocess import load_series, rescale
from services.imaging_dispatcher.destinations import DimseDestination
from training.imaging import lung
from training.imaging.synthetic_ct import generate_ct, slice_datasets

PACS, DISPATCHER = 18190, 18191
SINGLE, BURST = 10, 40
NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
MODEL = common_pb2.ModelRef(name="lung_nodule", version="1")


def make_reports(store: LocalBlobStore, n: int) -> list[tuple[fhir_pb2.FhirResourceEvent, set[str], int]]:
    """n write-back events of one synthetic CT analysed as n different revisions (distinct UIDs), with the SOP
    Instance UIDs and bytes of their SEG and SR."""
    ct = generate_ct(int(time.time()) % 100_000 + 700_000, n_nodules=2)
    datasets = [pydicom.dcmread(BytesIO(dicom_bytes(ds))) for ds in slice_datasets(ct)]
    volume = rescale(load_series(datasets))
    grid = lung.prepare(volume)
    found, labels = labelled_candidates(lung.training_sample(ct).mask, grid.affine, grid.spacing, 0.5, 8.0)
    out = []
    for i in range(n):
        objects = evidence_objects(
            datasets, volume, grid, labels, ROUTES["lung-nodule"], found, None, MODEL, f"bench|{uuid.uuid4()}|{i}", NOW
        )
        dicom = [o for o in objects if o[3] == "application/dicom"]
        refs = asyncio.run(store_evidence(store, dicom))
        uids = {pydicom.dcmread(BytesIO(data)).SOPInstanceUID for _, _, data, _ in dicom}
        report_id = str(uuid.uuid4())
        forms = [{"contentType": r.content_type, "url": r.uri, "title": r.kind} for r in refs]
        resource = {"resourceType": "DiagnosticReport", "id": report_id, "presentedForm": forms}
        event = fhir_pb2.FhirResourceEvent(
            event_id=report_id,
            resource_type="DiagnosticReport",
            resource_id=report_id,
            patient_reference=f"Patient/{ct.patient_id}",
            resource_json=json.dumps(resource).encode(),
        )
        out.append((event, uids, sum(len(d) for _, _, d, _ in dicom)))
    return out


class Pacs:
    """dcmtk's storescp; `no_delay` sets dcmtk's TCP_NODELAY switch (Nagle's algorithm off on its side too)."""

    def __init__(self, folder: Path, no_delay: bool = True) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TCP_NODELAY": "1" if no_delay else "0"}
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-aet", "PACS", "-od", str(folder), str(PACS)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 20
        while not DimseDestination("p", "127.0.0.1", PACS, "PACS", "BENCH", 2.0).echo():
            if time.monotonic() > deadline:
                raise RuntimeError("storescp did not answer C-ECHO")
            time.sleep(0.2)

    def received(self) -> set[str]:
        # storescp names files <modality>.<SOP Instance UID>
        return {f.name.split(".", 1)[1] for f in self.folder.iterdir() if "." in f.name}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_all(pacs: Pacs, uids: set[str], timeout_s: float = 300) -> float:
    deadline = time.monotonic() + timeout_s
    while not uids <= pacs.received():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(uids - pacs.received())} objects never reached the PACS")
        time.sleep(0.005)
    return time.perf_counter()


def one_at_a_time(producer: EventProducer, pacs: Pacs, reports: list, note: str) -> None:
    latencies = []
    for event, uids, _ in reports:
        t0 = time.perf_counter()
        producer.send_sync(FHIR_WRITEBACK.name, event.patient_reference.encode(), event)
        producer.flush()
        latencies.append(wait_all(pacs, uids) - t0)
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    row(
        "report published -> SEG and SR stored by the PACS, one at a time",
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
        f"{len(reports)} reports; {note}",
    )


def bench(settings: Settings, tmp: Path) -> None:
    reports = make_reports(LocalBlobStore(tmp / "blobs"), 2 * SINGLE + BURST)
    destinations = [f"bench-{uuid.uuid4().hex[:8]}=dicom://PACS@127.0.0.1:{PACS}"]
    proc = start(
        "imaging-dispatcher", DISPATCHER, settings, {"MEDSTREAM_DISPATCH_DESTINATIONS": json.dumps(destinations)}
    )
    producer = EventProducer(settings, "bench")
    try:
        nagle = Pacs(tmp / "pacs-nagle", no_delay=False)
        one_at_a_time(producer, nagle, reports[:SINGLE], "storescp with Nagle's algorithm on (dcmtk's default)")
        nagle.close()
        pacs = Pacs(tmp / "pacs")
        one_at_a_time(producer, pacs, reports[SINGLE : 2 * SINGLE], "storescp with TCP_NODELAY=1")

        burst = reports[2 * SINGLE :]
        everything = set().union(*(u for _, u, _ in burst))
        megabytes = sum(b for _, _, b in burst) / 1e6
        t0 = time.perf_counter()
        for event, _, _ in burst:
            producer.send_sync(FHIR_WRITEBACK.name, event.patient_reference.encode(), event)
        producer.flush()
        dispatch_s = wait_all(pacs, everything) - t0
        n = len(everything)
        row(
            f"burst of {len(burst)} reports through the dispatcher",
            f"{n / dispatch_s:.0f} objects/s, {megabytes / dispatch_s:.1f} MB/s",
            "one association per report (SEG + SR); TCP_NODELAY=1",
        )
    finally:
        producer.close()
        stop(proc)
    # Baseline: the same objects, as files, sent by dcmtk's storescu in one association.
    files = tmp / "files"
    files.mkdir()
    for f in (tmp / "pacs").iterdir():
        if f.name.split(".", 1)[-1] in everything:
            (files / f"{f.name}.dcm").write_bytes(f.read_bytes())
    pacs.close()
    baseline = Pacs(tmp / "pacs2")
    try:
        t0 = time.perf_counter()
        args = [dcmtk("storescu"), "-aec", "PACS", "+sd", "-nh", "127.0.0.1", str(PACS), str(files)]
        subprocess.run(args, check=True, capture_output=True, timeout=300)
        baseline_s = time.perf_counter() - t0
    finally:
        baseline.close()
    ratio = baseline_s / dispatch_s
    row(
        "baseline: dcmtk storescu, the same objects",
        f"{n / baseline_s:.0f} objects/s, {megabytes / baseline_s:.1f} MB/s",
        f"dispatcher/storescu throughput ratio {ratio:.2f}",
    )


def main() -> None:
    settings = stack_up()
    print("| measurement | result | note |\n|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bench(settings, Path(tmp))


if __name__ == "__main__":
    main()
