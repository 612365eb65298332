"""`make bench-drug`: the drug-discovery services on this machine's CPU.

- The floor: RDKit parsing, Morgan fingerprints and a random forest (trained on the ChEMBL series) over the same
  MOSES molecules, in process: what a chemist would write in an afternoon (no standardisation, filters, ensemble,
  ADMET, Kafka or graph);
- the funnel's own stages in process on the same molecules (standardise, filters, featurise);
- end to end per worker: molecules published to the library topic -> an outcome for each from one
  virtual-screening worker (drug_activity and drug_admet on Triton), molecules/s, with the worker's RSS sampled;
- drug_activity on Triton with and without dynamic batching: the served model, and a copy of it dropped into the
  repository for the run (Triton polls it) whose config has no dynamic_batching block; 16 clients sending one
  molecule per request to each, then 256 molecules per request (what the worker sends);
- molecule_generator on Triton: molecules/s and validity at that speed, unguided and guided;
- the library loader streaming all of MOSES train (1.58 M) to a scratch topic: molecules/s and its peak RSS.
Starts its own workers against the running local stack (started if needed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka.admin import AdminClient, NewTopic
from medstream.events.v1 import drug_pb2

from benchmarks.wearables import row, stack_up, start, stop
from services.cli import library
from services.common.config import Settings
from services.common.deadletter import SourceRecord
from services.common.model_contract import ModelContract
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import DRUG_SCREENING_OUTCOMES
from services.common.triton import TritonClient
from services.common.worker import Accepted
from services.drug import chem
from services.drug.generation.app import inputs as generation_inputs
from services.drug.generation.app import request
from services.drug.generation.contract import GUIDANCE, MOLECULE_GENERATOR
from services.drug.generation.decode import decode
from services.drug.screening import funnel
from services.drug.screening.contract import DRUG_ACTIVITY
from training.drug.activity import load_series, morgan, random_forest

SCREENING = 18291
REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
UNBATCHED = f"{DRUG_ACTIVITY.name}_unbatched"  # ignored by git (.gitignore), removed after the run


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample(n: int, offset: int = 0) -> list[drug_pb2.LibraryMolecule]:
    rows = library.library_records("moses-test", offset + n)
    return list(rows)[offset:]


def bench_floor(molecules: list[drug_pb2.LibraryMolecule]) -> None:
    series = load_series()
    forest = random_forest(morgan([c.smiles for c in series]), np.array([c.activity for c in series]), trees=300)
    smiles = [m.smiles for m in molecules]
    started = time.perf_counter()
    fingerprints = morgan(smiles)
    forest.predict(fingerprints)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    row(
        "floor: RDKit parse + Morgan r=2 + random forest (300 trees), in process", f"{len(smiles) / seconds:,.0f} mol/s"
    )


def bench_stages(molecules: list[drug_pb2.LibraryMolecule]) -> None:
    batch = [Accepted(SourceRecord("bench", 0, i, None, b""), m) for i, m in enumerate(molecules)]
    triage = funnel.triage(batch, seen={})
    n = len(molecules)
    notes = {
        "standardise": "RDKit parse, cleanup, largest fragment, uncharge, InChIKey",
        "filters": "property limits, PAINS, Brenk",
    }
    for stage, seconds in triage.seconds.items():
        row(f"funnel stage in process: {stage}", f"{n / seconds:,.0f} mol/s", notes.get(stage, ""))
    started = time.perf_counter()
    chem.featurise_many([c.parent.mol for c in triage.candidates])
    row("funnel stage in process: featurise", f"{len(triage.candidates) / (time.perf_counter() - started):,.0f} mol/s")
    row(
        "funnel in process: refused by the filters",
        f"{sum(triage.refused.values())} of {n}",
        ", ".join(f"{k} {v}" for k, v in triage.refused.items()) or "MOSES was built without PAINS/MCF matches",
    )


def bench_worker(settings: Settings, molecules: list[drug_pb2.LibraryMolecule]) -> None:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    for m in molecules:
        m.library, m.molecule_id = name, f"{name}:{m.molecule_id}"
    since = end_offsets(settings, DRUG_SCREENING_OUTCOMES.name)
    proc = start("virtual-screening", SCREENING, settings)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), rss_mb(proc.pid)))
            time.sleep(0.5)

    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        library.publish(settings, molecules)
        count: dict[str, int] = {}
        while time.monotonic() - started < 1800:
            outcomes = read_messages(settings, DRUG_SCREENING_OUTCOMES.name, drug_pb2.ScreeningOutcome, since, 60)
            count = {}
            for o in outcomes:
                if o.library == name:
                    count[o.stage] = count.get(o.stage, 0) + 1
            if sum(count.values()) >= len(molecules):
                break
            time.sleep(2.0)
        seconds = time.monotonic() - started
        done.set()
        peak = rss_mb(proc.pid, "VmHWM")
    finally:
        stop(proc)
    n = len(molecules)
    row(
        "end to end, 1 virtual-screening worker: published -> an outcome per molecule",
        f"{n / seconds:,.0f} mol/s",
        f"{n} MOSES test molecules in {seconds:.0f} s; outcomes {count}",
    )
    rss = [r for _, r in samples]
    if rss:
        quarter = [rss[int(q * (len(rss) - 1))] for q in (0.25, 0.5, 0.75, 1.0)]
        row(
            "worker RSS at 25/50/75/100 % of the run, peak",
            " / ".join(f"{r:.0f}" for r in quarter) + f" MB, peak {peak:.0f} MB",
            "the de-duplication table grows with distinct structures; the rest is per batch",
        )


@asynccontextmanager
async def unbatched_copy(triton: TritonClient) -> AsyncIterator[ModelContract]:
    """drug_activity served a second time under another name, its config without dynamic batching (same weights,
    same model.py, same single CPU instance); Triton's repository poll loads it and unloads it once removed."""
    source, folder = REPOSITORY / DRUG_ACTIVITY.name, REPOSITORY / UNBATCHED
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source / "1", folder / "1", ignore=shutil.ignore_patterns("__pycache__"))
    config = (source / "config.pbtxt").read_text().replace(f'name: "{DRUG_ACTIVITY.name}"', f'name: "{UNBATCHED}"')
    config, removed = re.subn(r"dynamic_batching \{[^}]*\}\n", "", config)
    assert removed == 1, "drug_activity's config.pbtxt has no dynamic_batching block to remove"
    (folder / "config.pbtxt").write_text(config)  # last: the poll sees a complete folder
    try:
        deadline = time.monotonic() + 120
        while not await triton.ready(UNBATCHED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton did not load {UNBATCHED} from {folder} within 120 s")
            await asyncio.sleep(1.0)
        yield dataclasses.replace(DRUG_ACTIVITY, name=UNBATCHED)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def throughput(triton: TritonClient, contract: ModelContract, batch: dict[str, np.ndarray]) -> tuple[float, ...]:
    """mol/s: one client, one molecule per request; 16 clients, one each; 256 molecules per request."""
    n = len(batch["ATOMS"])
    await triton.infer_contract(contract, {k: v[:1] for k, v in batch.items()})

    async def client(rows: range) -> None:
        for i in rows:
            await triton.infer_contract(contract, {k: v[i : i + 1] for k, v in batch.items()})

    started = time.perf_counter()
    await client(range(n))
    single = n / (time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(client(range(k, n, 16)) for k in range(16)))
    concurrent = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(4):
        await triton.infer_contract(contract, batch)
    return single, concurrent, 4 * n / (time.perf_counter() - started)


async def bench_triton(settings: Settings) -> None:
    triton = TritonClient(settings.triton_grpc_url, "bench-drug", max_concurrency=32)
    mols = [chem.standardise(chem.parse(m.smiles)).mol for m in sample(256, 10_000)]
    batch = chem.featurise_many(mols)
    batched = await throughput(triton, DRUG_ACTIVITY, batch)
    async with unbatched_copy(triton) as contract:
        unbatched = await throughput(triton, contract, batch)
    for label, (with_, without) in zip(
        (
            "1 client, 1 molecule/request (nothing to batch)",
            "16 clients, 1 molecule/request",
            "256 molecules/request (what the worker sends)",
        ),
        zip(batched, unbatched, strict=True),
        strict=True,
    ):
        row(
            f"Triton drug_activity, {label}",
            f"{with_:,.0f} mol/s with dynamic batching",
            f"{without:,.0f} mol/s without (same model, config without dynamic_batching)",
        )

    for guidance in (0.0, GUIDANCE):
        rows = generation_inputs(request(128, guidance, seed=7, request_id="bench"))
        await triton.infer_contract(MOLECULE_GENERATOR, {k: v[:2] for k, v in rows.items()})
        started = time.perf_counter()
        graphs, _ = await triton.infer_contract(MOLECULE_GENERATOR, rows)
        seconds = time.perf_counter() - started
        valid = sum(
            decode(a, b)[0] is not None for a, b in zip(graphs["ATOM_TYPES"], graphs["BOND_TYPES"], strict=True)
        )
        row(
            f"Triton molecule_generator, guidance {guidance:g}, 128 molecules in requests of 64",
            f"{128 / seconds:,.1f} mol/s",
            f"validity {valid / 128:.0%} (one connected molecule that sanitises)",
        )
    await triton.close()


def _load(topic: str, out: Any) -> None:
    loaded = library.publish(Settings(), library.library_records("moses-train"), topic=topic)
    out.put((loaded.molecules, loaded.seconds, rss_mb(os.getpid(), "VmHWM")))


def bench_loader(settings: Settings) -> None:
    """The loader over all of MOSES train in a fresh process, to a scratch topic deleted afterwards: its throughput
    and that process's peak RSS."""
    topic = f"medstream.bench.library.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.kafka_client_config())
    admin.create_topics([NewTopic(topic, num_partitions=settings.kafka_topic_partitions, replication_factor=1)])[
        topic
    ].result(30)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    try:
        child = context.Process(target=_load, args=(topic, results))
        child.start()
        molecules, seconds, peak = results.get(timeout=1800)
        child.join(60)
    finally:
        admin.delete_topics([topic])[topic].result(30)
    row(
        "loader: all of MOSES train -> a scratch topic, one process",
        f"{molecules / seconds:,.0f} mol/s",
        f"{molecules:,} molecules in {seconds:.0f} s; peak RSS {peak:.0f} MB",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--molecules", type=int, default=20000, help="MOSES test molecules for the funnel")
    parser.add_argument("--skip-loader", action="store_true", help="skip streaming all of MOSES train")
    args = parser.parse_args()
    settings = stack_up()
    print("| measurement | result | note |\n|---|---|---|", flush=True)
    molecules = sample(args.molecules)
    bench_floor(molecules)
    bench_stages(molecules)
    asyncio.run(bench_triton(settings))
    bench_worker(settings, molecules)
    if not args.skip_loader:
        bench_loader(settings)


if __name__ == "__main__":
    main()
