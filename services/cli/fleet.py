"""`medstream simulate fleet`: wearable devices streaming vendor payloads through the ingestion gateway.

Heart signals come from neurokit2's ECG simulator (R-R intervals of simulated ECGs at a few heart rates, one
per device with its own offset); CGM traces come from simglucose's virtual patients (the same generator the
glycaemia model is trained on). Payloads use the bundled `acme-band-2` and `glucomax-cgm` templates and the
development registry's simulated device ranges (acme-sim-*, gmx-sim-*).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import numpy as np

HEART_RATES = (62, 78, 96, 132)  # one template per rate; 132/min sustains the tachycardia rule
ECG_SECONDS = 900
BAND_PERIOD_S = 5


@dataclass
class FleetReport:
    devices: int
    batches: int = 0
    readings: int = 0
    accepted: int = 0
    rejected: int = 0
    seconds: float = 0.0
    patients: list[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def rr_templates(seed: int = 7) -> list[np.ndarray]:
    """R-R interval series (ms) from neurokit2-simulated ECGs, one per heart rate."""
    import neurokit2 as nk

    out = []
    for i, rate in enumerate(HEART_RATES):
        ecg = nk.ecg_simulate(
            duration=ECG_SECONDS, sampling_rate=250, heart_rate=rate, heart_rate_std=3, random_state=seed + i
        )
        _, info = nk.ecg_peaks(ecg, sampling_rate=250)
        out.append(np.diff(np.asarray(info["ECG_R_Peaks"])) / 250.0 * 1000.0)
    return out


def cgm_traces(days: int = 1, seed: int = 11) -> list[np.ndarray]:
    from training.glycaemia.simulation import PATIENTS, Cohort, generate

    traces = generate(Cohort(PATIENTS, days=days, seed=seed))
    return [traces[p] for p in sorted(traces)]


def band_batches(device: str, rr: np.ndarray, offset: int, start_ms: int, minutes: int) -> list[list[dict]]:
    """One batch per simulated minute of readings every BAND_PERIOD_S seconds."""
    batches, beat, t_ms = [], offset, float(start_ms)
    rng = np.random.default_rng(offset)
    for _ in range(minutes):
        batch = []
        for _ in range(60 // BAND_PERIOD_S):
            end, intervals = t_ms + BAND_PERIOD_S * 1000, []
            while t_ms < end:
                interval = float(rr[beat % len(rr)])
                intervals.append(round(interval))
                t_ms += interval
                beat += 1
            hr = 60000.0 / (sum(intervals) / len(intervals))
            batch.append(
                {
                    "device": device,
                    "ts": int(end - BAND_PERIOD_S * 1000),
                    "hr": round(hr, 1),
                    "rr_ms": intervals,
                    "spo2": round(float(rng.normal(0.975, 0.006)), 3),
                }
            )
        batches.append(batch)
    return batches


def cgm_batch(device: str, trace: np.ndarray, offset: int, end: datetime, readings: int) -> list[dict]:
    end_s = int(end.timestamp()) // 300 * 300
    return [
        {
            "sensor_id": device,
            "glucose_mmol": round(float(trace[(offset + i) % len(trace)]) / 18.016, 2),
            "time": datetime.fromtimestamp(end_s - 300 * (readings - 1 - i), UTC).isoformat().replace("+00:00", "Z"),
        }
        for i in range(readings)
    ]


async def run_fleet(
    gateway_url: str, devices: int = 1000, minutes: int = 5, cgm_hours: float = 2.5, concurrency: int = 16
) -> FleetReport:
    """Half bands, half CGMs; bands send `minutes` of data, CGMs a `cgm_hours` backfill, all ending now."""
    run = uuid.uuid4().hex[:8]
    bands, cgms = devices // 2, devices - devices // 2
    now = datetime.now(UTC)
    start_ms = int(now.timestamp() * 1000) - minutes * 60_000
    templates, traces = rr_templates(), cgm_traces()
    work: list[tuple[str, str, list[dict]]] = []
    report = FleetReport(devices)
    for i in range(bands):
        device = f"acme-sim-{run}-{i:04d}"
        report.patients.append(f"sim-pt-{run}-{i:04d}")
        for n, batch in enumerate(band_batches(device, templates[i % len(templates)], i * 37, start_ms, minutes)):
            work.append((f"{run}-{device}-{n}", "acme-band-2", batch))
    for j in range(cgms):
        i = bands + j
        device = f"gmx-sim-{run}-{i:04d}"
        report.patients.append(f"sim-pt-{run}-{i:04d}")
        trace = traces[j % len(traces)]
        work.append(
            (
                f"{run}-{device}",
                "glucomax-cgm",
                cgm_batch(device, trace, (j * 53) % len(trace), now, int(cgm_hours * 12)),
            )
        )
    tokens = {"acme-band-2": "dev-acme-token", "glucomax-cgm": "dev-glucomax-token"}
    queue: asyncio.Queue[tuple[str, str, list[dict]]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            key, device_type, readings = queue.get_nowait()
            body = {"idempotency_key": key, "device_type": device_type, "readings": readings}
            for attempt in range(10):  # a vendor retries the same batch on timeouts and 503s
                try:
                    resp = await client.post(
                        f"{gateway_url}/v1/wearables/batches",
                        json=body,
                        headers={"Authorization": f"Bearer {tokens[device_type]}"},
                    )
                    if resp.status_code != 503:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            resp.raise_for_status()
            answer = resp.json()
            report.batches += 1
            report.readings += len(readings)
            report.accepted += answer["accepted"]
            report.rejected += len(answer["rejected"])

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
    report.seconds = time.perf_counter() - started
    return report
