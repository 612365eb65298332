"""`make bench-imaging`: the imaging path on this machine's CPU.

- C-STORE into the imaging gateway (fsync + Kafka ack before Success) vs dcmtk's own storescp receiving the same
  files on the same machine: instances/s, MB/s and their ratio, one run;
- preprocessing time per series (read from the blob store, HU/normalisation, resampling, windowing);
- series complete -> DiagnosticReport published, p50/p99, and last slice sent -> suspected-stroke alert;
- the same for a follow-up CT compared with its prior (graph lookup, prior read, rigid registration), and the
  worker's mean time per analysis stage (preprocess, inference, postprocess, prior, evidence: SEG/SR/key image);
- Triton throughput of the 3D model: one patch per request from one client (the server cannot batch) vs 16
  concurrent clients (the dynamic batcher forms batches) vs 16 patches per request.
Starts its own gateway, imaging worker and graph writer against the running local stack (started if needed).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from medstream.events.v1 import alert_pb2, dicom_pb2, fhir_pb2

from benchmarks.wearables import row, stack_up, start, stop
from services.cli.dcmtk import dcmtk
from services.common.config import Settings
from services.common.topic_reader import end_offsets
from services.common.topics import ALERTS, DICOM_SERIES, FHIR_WRITEBACK
from services.common.triton import TritonClient
from services.imaging.analysis import read_instances
from services.imaging.routes import ROUTES
from training.imaging import lung
from training.imaging.stroke import lesion_datasets
from training.imaging.synthetic_ct import generate_ct, generate_followup, write_series

HTTP, DIMSE, WORKER, WRITER, STORESCP = 18150, 18151, 18152, 18153, 18154


def ms(values: list[float]) -> str:
    return f"p50 {np.percentile(values, 50) * 1000:.0f} ms, p99 {np.percentile(values, 99) * 1000:.0f} ms"


def storescu(folder: Path, port: int) -> float:
    t0 = time.perf_counter()
    args = [dcmtk("storescu"), "-aec", "MEDSTREAM", "+sd", "+r", "-nh", "127.0.0.1", str(port), str(folder)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return time.perf_counter() - t0


def bench_cstore(root: Path) -> None:
    files = sorted(root.rglob("*.dcm"))
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    gateway_s = storescu(root, DIMSE)
    with tempfile.TemporaryDirectory() as out:
        scp = subprocess.Popen(
            [dcmtk("storescp"), "-od", out, "+B", str(STORESCP)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(1.0)
            baseline_s = storescu(root, STORESCP)
        finally:
            scp.terminate()
            scp.wait(10)
    n = len(files)
    row(
        "C-STORE into the imaging gateway",
        f"{n / gateway_s:.0f} instances/s, {megabytes / gateway_s:.1f} MB/s",
        f"{n} instances ({megabytes:.0f} MB) by storescu; blob fsync + Kafka ack before each Success",
    )
    ratio = baseline_s / gateway_s
    row(
        "baseline: dcmtk storescp (+B, bit-preserving)",
        f"{n / baseline_s:.0f} instances/s, {megabytes / baseline_s:.1f} MB/s",
        f"gateway/storescp throughput ratio {ratio:.2f}",
    )


class Watch:
    """Records of the given topics from their current ends, decoded, with their Kafka timestamps."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.consumer = Consumer(
            {**settings.kafka_client_config(), "group.id": "medstream-bench-imaging", "enable.auto.commit": False}
        )
        assignment = []
        for topic in topics:
            assignment += [TopicPartition(topic, p, o) for p, o in end_offsets(settings, topic).items()]
        self.consumer.assign(assignment)
        self.records: list[tuple[str, bytes, float]] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is not None and not msg.error():
                self.records.append((msg.topic() or "", msg.value() or b"", msg.timestamp()[1] / 1000))

    def close(self) -> None:
        self.consumer.close()


def report_latencies(records: list[tuple[str, bytes, float]]) -> list[float]:
    completed = {}
    for topic, value, _ in records:
        if topic == DICOM_SERIES.name:
            s = dicom_pb2.DicomSeriesComplete.FromString(value)
            if s.route:
                completed[s.series_instance_uid] = s.completed_at.ToNanoseconds() / 1e9
    reports = {}
    for topic, value, ts in records:
        if topic == FHIR_WRITEBACK.name:
            event = fhir_pb2.FhirResourceEvent.FromString(value)
            if event.resource_type == "DiagnosticReport":
                uid = event.resource_json.split(b'"value":"urn:oid:')[1].split(b'"')[0].decode()
                reports[uid] = ts
    return [reports[uid] - done for uid, done in completed.items() if uid in reports]


def bench_latency(settings: Settings, ct_root: Path, tmp: Path, followup: Path) -> None:
    watch = Watch(settings, [DICOM_SERIES.name, FHIR_WRITEBACK.name, ALERTS.name])
    storescu(ct_root, DIMSE)  # fresh series: each completes (at its Images in Acquisition count) and is analysed
    mr = tmp / "mr"
    mr.mkdir()
    datasets, _ = lesion_datasets(int(time.time()) % 1000)
    for i, ds in enumerate(datasets):
        ds.save_as(mr / f"MR{i:04d}.dcm", enforce_file_format=True)
    sent_mr = time.time()
    storescu(mr, DIMSE)
    sent_mr_done = time.time()
    watch.poll(90)
    latencies = report_latencies(watch.records)
    if latencies:
        row(
            "series complete -> DiagnosticReport published",
            ms(latencies),
            f"{len(latencies)} series (CT chest and "
            "MR brain): read blobs, preprocess, Triton, measure, SEG/SR/key image, publish",
        )
    alerts = [
        ts
        for topic, value, ts in watch.records
        if topic == ALERTS.name and alert_pb2.Alert.FromString(value).kind == "suspected-stroke"
    ]
    if alerts:
        row(
            "last MR slice sent -> suspected-stroke alert",
            f"{min(alerts) - sent_mr_done:.1f} s",
            f"incl. the 2 s series quiet period; 20 slices sent in {sent_mr_done - sent_mr:.1f} s",
        )
    before = len(watch.records)
    storescu(followup, DIMSE)  # the first CT's patient 90 days later; its prior is in the graph by now
    watch.poll(60)
    watch.close()
    compared = report_latencies(watch.records[before:])
    if compared:
        row(
            "follow-up CT complete -> DiagnosticReport with change vs prior",
            ms(compared),
            "adds graph lookup, reading the prior, rigid registration (Mattes MI) and matching",
        )


def bench_stages() -> None:
    """Mean seconds per analysis stage from the worker's own histogram (medstream_imaging_analysis_seconds)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{WORKER}/metrics", timeout=5).text
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "medstream_imaging_analysis_seconds":
            for sample in family.samples:
                key = (sample.labels["route"], sample.labels["stage"])
                totals.setdefault(key, {})[sample.name.rsplit("_", 1)[1]] = sample.value
    for route in sorted({r for r, _ in totals}):
        parts = [
            f"{stage} {t['sum'] / t['count']:.2f}"
            for (r, stage), t in sorted(totals.items())
            if r == route and t.get("count")
        ]
        row(f"analysis stages, {route} (mean s per series)", ", ".join(parts), "from the worker's /metrics")


def bench_preprocess(ct_root: Path) -> None:
    times = []
    for folder in sorted(p for p in ct_root.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.dcm"))
        t0 = time.perf_counter()
        ROUTES["lung-nodule"].prepare(read_instances([f.resolve().as_uri() for f in files])[1])
        times.append(time.perf_counter() - t0)
    row(
        "preprocessing per CT series (80 x 256 x 256)",
        f"{np.median(times):.2f} s median",
        "read 80 files, HU, resample to 2.5 mm, lung window",
    )


async def bench_triton(settings: Settings) -> None:
    triton = TritonClient(settings.triton_grpc_url, "bench-imaging", max_concurrency=32)
    rng = np.random.default_rng(0)
    patch = rng.random((1, 1, lung.PATCH, lung.PATCH, lung.PATCH), dtype=np.float32)
    await triton.infer(lung.MODEL_NAME, {"PATCH": patch}, ["PROB"])
    n = 96
    t0 = time.perf_counter()
    for _ in range(n):
        await triton.infer(lung.MODEL_NAME, {"PATCH": patch}, ["PROB"])
    single = n / (time.perf_counter() - t0)

    async def client(k: int) -> None:
        for _ in range(k):
            await triton.infer(lung.MODEL_NAME, {"PATCH": patch}, ["PROB"])

    t0 = time.perf_counter()
    await asyncio.gather(*(client(n // 16) for _ in range(16)))
    concurrent = n / (time.perf_counter() - t0)
    batch = np.repeat(patch, 16, axis=0)
    t0 = time.perf_counter()
    for _ in range(n // 16):
        await triton.infer(lung.MODEL_NAME, {"PATCH": batch}, ["PROB"])
    batched = n / (time.perf_counter() - t0)
    row("Triton lung_nodule, 1 client, 1 patch/request (no batching possible)", f"{single:.1f} patches/s", "32^3")
    row("Triton lung_nodule, 16 clients, 1 patch/request (dynamic batching)", f"{concurrent:.1f} patches/s", "")
    row("Triton lung_nodule, 16 patches/request", f"{batched:.1f} patches/s", "what the imaging service sends")
    await triton.close()


def main() -> None:
    settings = stack_up()
    print("| measurement | result | note |\n|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ct_root = tmp / "ct"
        base = int(time.time()) % 100_000 + 300_000
        for i in range(4):
            write_series(generate_ct(base + i), ct_root / f"s{i}")
        for extra in ct_root.rglob("*.json"):
            extra.unlink()
        bench_preprocess(ct_root)
        procs = [
            start(
                "imaging-gateway",
                HTTP,
                settings,
                {
                    "MEDSTREAM_DICOM_DIMSE_PORT": str(DIMSE),
                    "MEDSTREAM_DICOM_BLOB_DIR": str(tmp / "blobs"),
                    "MEDSTREAM_DICOM_TRUST_IMAGES_IN_ACQUISITION": "true",
                },
            ),
            start("imaging", WORKER, settings, {"MEDSTREAM_IMAGING_QUIET_S": "2"}),
            start("graph-writer", WRITER, settings),
        ]
        try:
            bench_cstore(ct_root)
            fresh = tmp / "ct2"
            for i in range(4):
                write_series(generate_ct(base + 10 + i), fresh / f"s{i}")
            for extra in fresh.rglob("*.json"):
                extra.unlink()
            later = tmp / "followup"
            write_series(generate_followup(base + 10), later)
            for extra in later.rglob("*.json"):
                extra.unlink()
            bench_latency(settings, fresh, tmp, later)
            bench_stages()
        finally:
            for proc in procs:
                stop(proc)
    asyncio.run(bench_triton(settings))


if __name__ == "__main__":
    main()
