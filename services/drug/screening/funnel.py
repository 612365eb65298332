"""The screening funnel's decisions over plain values: which library records are invalid, duplicates or refused by
the filters, how the activity ensemble's members become a score with its uncertainty, which scored molecules the
ADMET pre-filter stops, and what a hit publishes (hits topic record, graph mutation). app.py wires it to Kafka and
Triton; tests/drug/test_funnel.py runs it on plain values.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import common_pb2, drug_pb2, graph_pb2

from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.common.worker import Accepted
from services.drug import chem
from services.drug.screening.contract import ADMET_ENDPOINTS, ADMET_THRESHOLDS, TARGET

# Where a library record ends, in funnel order: the outcome's stage and the counters' label.
STAGES = ("invalid", "duplicate", "refused", "inactive", "admet-refused", "hit", "error")
TARGET_NAME = f"target of ChEMBL series {TARGET}"  # the shipped files name the assay, not the protein
# The ADMET pre-filter refuses a molecule the surrogate calls a hERG blocker or Ames mutagen with confidence, the two
# usual hard stops early in screening. Everything at the contract's thresholds (0.5) is flagged: 0.5 alone flags a
# third of DrugBank's approved drugs for hERG. DILI and ClinTox only flag: their admet-ai models learned from a few
# hundred drugs (TDC's DILI set has 475), and the surrogate puts the whole ChEMBL sulfonamide series at DILI 0.99.
ADMET_REFUSE = {"hERG": 0.8, "AMES": 0.8}


def structure(message: drug_pb2.LibraryMolecule) -> str:
    """The record's structure text; a record with both or neither is refused."""
    if bool(message.smiles) == bool(message.molblock):
        raise chem.InvalidMolecule("a library record carries exactly one of smiles and molblock")
    return message.smiles or message.molblock


@dataclass(frozen=True, slots=True)
class Candidate:
    """A molecule past standardisation, de-duplication and the filters: what the activity model scores."""

    accepted: Accepted[drug_pb2.LibraryMolecule]
    parent: chem.Standardised
    screen: chem.Screen


@dataclass
class Triage:
    """What the first stages did with a batch."""

    candidates: list[Candidate] = field(default_factory=list)
    invalid: list[tuple[Accepted[drug_pb2.LibraryMolecule], str]] = field(default_factory=list)
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # first refusal's kind -> molecules
    outcomes: list[drug_pb2.ScreeningOutcome] = field(default_factory=list)  # of the invalid, duplicate, refused
    seen: dict[str, str] = field(default_factory=dict)  # seen_key of structures first met in this batch -> molecule_id
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> time spent


def seen_key(library: str, inchikey: str) -> str:
    """De-duplication is per library: a structure is screened once within a library, and again when another library
    (a new campaign, a later model) sends it; the hits topic and the graph hold it once either way."""
    return f"{library}|{inchikey}"


def triage(batch: Sequence[Accepted[drug_pb2.LibraryMolecule]], seen: Mapping[str, str]) -> Triage:
    """Parse and standardise (invalid: RDKit's reason), drop structures met before in the same library (in `seen`
    or earlier in the batch), then property limits and PAINS. A refused structure is remembered too: its duplicates
    would be refused again."""
    out = Triage()
    standardise_s = filters_s = 0.0
    for a in batch:
        started = time.perf_counter()
        try:
            parent = chem.standardise(chem.parse(structure(a.message)))
        except chem.InvalidMolecule as exc:
            out.invalid.append((a, str(exc)))
            out.outcomes.append(outcome(a.message, "invalid", str(exc)))
            continue
        finally:
            standardise_s += time.perf_counter() - started
        key = seen_key(a.message.library, parent.inchikey)
        first = out.seen.get(key) or seen.get(key)
        if first is not None and first != a.message.molecule_id:  # the same record again is a replay: screen it
            out.duplicates += 1
            out.outcomes.append(outcome(a.message, "duplicate", f"the structure of {first}", parent))
            continue
        out.seen[key] = a.message.molecule_id
        started = time.perf_counter()
        screened = chem.screen(parent.mol)
        filters_s += time.perf_counter() - started
        if screened.refused:
            out.refused["PAINS" if screened.refused[0].startswith("PAINS") else "property"] += 1
            out.outcomes.append(
                outcome(a.message, "refused", "; ".join(screened.refused), parent, alerts=screened.alerts)
            )
            continue
        out.candidates.append(Candidate(a, parent, screened))
    out.seconds = {"standardise": standardise_s, "filters": filters_s}
    return out


def outcome(
    message: drug_pb2.LibraryMolecule,
    stage: str,
    reason: str = "",
    parent: chem.Standardised | None = None,
    score: Score | None = None,
    model: common_pb2.ModelRef | None = None,
    alerts: Sequence[str] = (),
) -> drug_pb2.ScreeningOutcome:
    """The funnel's decision for one library record (see STAGES)."""
    out = drug_pb2.ScreeningOutcome(
        molecule_id=message.molecule_id,
        library=message.library,
        request_id=message.request_id,
        stage=stage,
        reason=reason[:1000],
        alerts=alerts,
    )
    if parent is not None:
        out.inchikey, out.smiles = parent.inchikey, parent.smiles
    if score is not None:
        out.activity, out.uncertainty, out.rank_score = score.activity, score.uncertainty, score.rank
    if model is not None:
        out.model.CopyFrom(model)
    return out


@dataclass(frozen=True, slots=True)
class Score:
    activity: float  # ensemble mean
    uncertainty: float  # ensemble standard deviation
    members: tuple[float, ...]

    @property
    def rank(self) -> float:
        """A lower confidence bound: the funnel ranks and thresholds on it, so a confident score beats a lucky one."""
        return self.activity - self.uncertainty


def scores(activity: np.ndarray) -> list[Score]:
    """ACTIVITY [B, members] -> one Score per row."""
    values = np.asarray(activity, dtype=np.float64)
    return [Score(float(row.mean()), float(row.std()), tuple(float(v) for v in row)) for row in values]


def admet_flags(probabilities: Sequence[float], at: Mapping[str, float] = ADMET_THRESHOLDS) -> list[str]:
    """The endpoints at or over their threshold, e.g. ['hERG 0.71']."""
    return [f"{name} {p:.2f}" for name, p in zip(ADMET_ENDPOINTS, probabilities, strict=True) if p >= at[name]]


def admet_refusals(probabilities: Sequence[float]) -> list[str]:
    """The endpoints at or over their ADMET_REFUSE level: the pre-filter stops the molecule."""
    levels = {name: ADMET_REFUSE.get(name, float("inf")) for name in ADMET_ENDPOINTS}
    return admet_flags(probabilities, levels)


def hit(
    candidate: Candidate, score: Score, admet: Sequence[float], model: common_pb2.ModelRef, producer: str
) -> drug_pb2.ScreeningHit:
    message = candidate.accepted.message
    scored = Timestamp()
    scored.GetCurrentTime()
    return drug_pb2.ScreeningHit(
        inchikey=candidate.parent.inchikey,
        smiles=candidate.parent.smiles,
        molecule_id=message.molecule_id,
        library=message.library,
        request_id=message.request_id,
        target=TARGET,
        model=model,
        activity=score.activity,
        uncertainty=score.uncertainty,
        members=score.members,
        rank_score=score.rank,
        alerts=candidate.screen.alerts,
        admet={name: float(p) for name, p in zip(ADMET_ENDPOINTS, admet, strict=True)},
        molecular_weight=candidate.screen.weight,
        logp=candidate.screen.logp,
        scored_at=scored,
        provenance=candidate.accepted.record.provenance(producer, message.molecule_id),
    )


def graph_mutation(h: drug_pb2.ScreeningHit) -> graph_pb2.GraphMutation:
    """(:Compound)-[:PREDICTED_ACTIVE {score, uncertainty, model, version}]->(:Target)<-[:MEASURES]-(:Assay), keyed
    by the InChIKey and the model version: a replay or a re-screen of the same structure updates, never duplicates."""
    compound = Node(
        "Compound",
        h.inchikey,
        {
            "smiles": h.smiles,
            "library": h.library,
            "molecule_id": h.molecule_id,
            "molecular_weight": round(h.molecular_weight, 3),
            "logp": round(h.logp, 3),
            "alerts": "; ".join(h.alerts),
            "admet_flags": "; ".join(admet_flags([h.admet[name] for name in ADMET_ENDPOINTS])),
            **{f"admet_{name}": round(p, 4) for name, p in h.admet.items()},
        },
    )
    target = Node("Target", TARGET, {"name": TARGET_NAME})
    assay = Node("Assay", TARGET, {"source": "ChEMBL", "series": TARGET})
    active = Relationship(
        compound,
        "PREDICTED_ACTIVE",
        target,
        {
            "score": round(h.activity, 4),
            "uncertainty": round(h.uncertainty, 4),
            "rank_score": round(h.rank_score, 4),
            "model": h.model.name,
            "version": h.model.version,
        },
    )
    return to_mutation(
        f"screening|{h.inchikey}|{h.model.name}|{h.model.version}",
        relationships=[active, Relationship(assay, "MEASURES", target)],
        provenance=h.provenance,
    )
