"""The drug-discovery loop of `medstream demo`: generate -> screen -> rank -> graph on the local stack.

Two generation requests (unguided, and guided toward the screening target) go to the molecule-generation service;
their molecules stream through virtual screening; the summary compares the two requests stage by stage, lists the
best candidates with scores, alerts and ADMET, checks the hits reached Neo4j, and draws the best as a PNG.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medstream.events.v1 import drug_pb2
from rich.console import Console

from services.cli.demo import graph_count, start_services, stop_services, wait_ready
from services.common.config import Settings
from services.common.kafka import EventProducer
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import DRUG_GENERATION_REQUESTS, DRUG_HITS, DRUG_LIBRARY, DRUG_SCREENING_OUTCOMES
from services.drug.generation.app import library_of, request
from services.drug.generation.contract import GUIDANCE

SERVICES = ("molecule-generation", "virtual-screening", "graph-writer")
COUNT = 256


def depict(outcomes: Sequence[drug_pb2.ScreeningOutcome], path: Path) -> Path:
    """The candidates as a grid with their scores (RDKit's drawing, no display needed)."""
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols = [Chem.MolFromSmiles(o.smiles) for o in outcomes]
    legends = [f"{o.activity:.2f} +/- {o.uncertainty:.2f} ({o.stage})" for o in outcomes]
    image = Draw.MolsToGridImage(mols, molsPerRow=3, subImgSize=(300, 260), legends=legends)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(str(path))
    return path


def run_drug_demo(settings: Settings, console: Console, timeout_s: float) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    requests = {
        "unguided": request(COUNT, 0.0, seed=1, request_id=f"demo-{run}-unguided"),
        "guided": request(COUNT, GUIDANCE, seed=1, request_id=f"demo-{run}-guided"),
    }
    libraries = {name: library_of(r) for name, r in requests.items()}
    topics = (DRUG_LIBRARY.name, DRUG_SCREENING_OUTCOMES.name, DRUG_HITS.name)
    before = {t: end_offsets(settings, t) for t in topics}
    procs = start_services(settings, SERVICES)
    try:
        wait_ready(procs, settings, timeout_s)
        console.print(f"asking for {COUNT} molecules unguided and {COUNT} guided toward the screening target")
        started = time.monotonic()
        producer = EventProducer(settings, "demo")
        for r in requests.values():
            producer.send_sync(DRUG_GENERATION_REQUESTS.name, r.request_id.encode(), r)
        producer.close()
        deadline = started + timeout_s
        generated: dict[str, list[drug_pb2.LibraryMolecule]] = {}
        outcomes: dict[str, dict[str, drug_pb2.ScreeningOutcome]] = {}
        while time.monotonic() < deadline:
            library = read_messages(settings, DRUG_LIBRARY.name, drug_pb2.LibraryMolecule, before[DRUG_LIBRARY.name])
            generated = {n: [m for m in library if m.library == lib] for n, lib in libraries.items()}
            scored = read_messages(
                settings, DRUG_SCREENING_OUTCOMES.name, drug_pb2.ScreeningOutcome, before[DRUG_SCREENING_OUTCOMES.name]
            )
            outcomes = {n: {o.molecule_id: o for o in scored if o.library == lib} for n, lib in libraries.items()}
            if all(generated[n] and len(outcomes[n]) >= len(generated[n]) for n in libraries):
                break
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"service {name} exited; see {settings.state_dir / 'logs' / name}.log")
            time.sleep(1.0)
        seconds = time.monotonic() - started
        hits = [
            h
            for h in read_messages(settings, DRUG_HITS.name, drug_pb2.ScreeningHit, before[DRUG_HITS.name])
            if h.library in libraries.values()
        ]
        keys = sorted({h.inchikey for h in hits})
        in_graph = 0
        deadline = time.monotonic() + 60
        while keys and time.monotonic() < deadline:
            in_graph = graph_count(
                settings,
                "MATCH (c:Compound)-[:PREDICTED_ACTIVE]->(:Target) WHERE c.inchikey IN $keys "
                "RETURN count(DISTINCT c) AS n",
                keys=keys,
            )
            if in_graph >= len(keys):
                break
            time.sleep(1.0)
    finally:
        stop_services(procs)
    summary: dict[str, Any] = {"seconds": round(seconds, 1)}
    for name in libraries:
        got = outcomes.get(name, {}).values()
        scored_ = [o for o in got if o.model.name]
        activity = sorted(o.activity for o in scored_)
        summary[name] = {
            "requested": COUNT,
            "valid_molecules": len(generated.get(name, [])),
            "outcomes": dict(Counter(o.stage for o in got)),
            "median_predicted_activity": round(activity[len(activity) // 2], 2) if activity else None,
            "best_predicted_activity": round(activity[-1], 2) if activity else None,
        }
    best = sorted(
        (o for by_id in outcomes.values() for o in by_id.values() if o.model.name),
        key=lambda o: o.rank_score,
        reverse=True,
    )
    unique = list({o.inchikey: o for o in reversed(best)}.values())[::-1][:6]
    admet = {h.inchikey: h.admet for h in hits}
    summary["best_candidates"] = [
        {
            "smiles": o.smiles,
            "activity": f"{o.activity:.2f} ± {o.uncertainty:.2f}",
            "stage": o.stage,
            "alerts": list(o.alerts),
            "admet": {k: round(v, 2) for k, v in admet.get(o.inchikey, {}).items()},
            "request": o.request_id,
        }
        for o in unique
    ]
    summary["hits"] = len(keys)
    scored_all = [o for by_id in outcomes.values() for o in by_id.values() if o.model.name]
    threshold = settings.screening_hit_threshold
    confident = sum(o.activity >= threshold > o.rank_score for o in scored_all)
    if confident:
        summary["note"] = (
            f"{confident} scored molecules have a mean predicted activity of {threshold} or more but an ensemble "
            "spread that takes their lower confidence bound under it: the members disagree on molecules this far "
            "from the series they learned"
        )
    summary["hits_in_graph"] = in_graph
    if unique:
        summary["depiction"] = str(depict(unique, settings.state_dir / "demo" / f"drug-candidates-{run}.png"))
    summary["ok"] = all(generated.get(n) and len(outcomes.get(n, {})) >= len(generated[n]) for n in libraries) and (
        in_graph >= len(keys)
    )
    return summary
