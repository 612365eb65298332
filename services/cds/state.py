"""Per-patient decision-support state built from FHIR R4 resources (pure).

What the service keeps per patient, normalised as it arrives: the latest lab per analyte (canonical LOINC and
UCUM unit), the latest vital signs, active conditions and medications, and the most recent notes. `fingerprint`
summarises what evaluation depends on, so the service evaluates a patient only when that changes: a repeated
resource, a vital sign, a Practitioner or a lab that moved by less than 5 % changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medstream.events.v1 import fhir_pb2

from services.cds.labs import LabObservation, LabPhenotype, NormalisedLab, classify, normalise

LOINC = "http://loinc.org"
MAX_NOTES = 5
LAB_BUCKET = math.log(1.05)  # a lab counts as changed when it moves by 5 % or more
NOTE_TYPES = ("text/plain", "text/markdown")
ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
ACTIVE_MEDICATION = frozenset({"active", "on-hold", "draft"})
WITHDRAWN = frozenset({"entered-in-error", "refuted"})


@dataclass(frozen=True, slots=True)
class VitalSign:
    key: str
    unit: str  # UCUM
    conversions: Mapping[str, float]  # other UCUM unit -> factor (temperature handled apart)
    low: float | None = None
    high: float | None = None
    low_hpo: str | None = None
    high_hpo: str | None = None


# Adult decision limits (NEWS2 boundaries where it has them); phenotypes feed the graph ranking.
VITALS: dict[str, VitalSign] = {
    "8867-4": VitalSign("heart_rate", "/min", {"{beats}/min": 1.0}, 50, 100, "HP:0001662", "HP:0001649"),
    "9279-1": VitalSign("respiratory_rate", "/min", {"{breaths}/min": 1.0}, None, 20, None, "HP:0002789"),
    "8310-5": VitalSign("body_temperature", "Cel", {}, 35.0, 38.0, "HP:0002045", "HP:0001945"),
    "59408-5": VitalSign("oxygen_saturation", "%", {}, 92, None, "HP:0012418", None),
    "2708-6": VitalSign("oxygen_saturation", "%", {}, 92, None, "HP:0012418", None),
    "8480-6": VitalSign("systolic_bp", "mm[Hg]", {}, 90, 140, "HP:0002615", "HP:0000822"),
    "8462-4": VitalSign("diastolic_bp", "mm[Hg]", {}, None, 90, None, "HP:0000822"),
    "39156-5": VitalSign("bmi", "kg/m2", {}, None, 30, None, "HP:0001513"),
    "29463-7": VitalSign("body_weight", "kg", {"[lb_av]": 0.45359237, "g": 0.001}),
    "8302-2": VitalSign("body_height", "cm", {"m": 100.0, "[in_i]": 2.54}),
}


def _vital_value(spec: VitalSign, value: float, unit: str) -> float | None:
    unit = unit.strip()
    if unit == spec.unit or (unit == "" and spec.unit == "%"):
        return value
    if spec.key == "body_temperature" and unit == "[degF]":
        return (value - 32) * 5 / 9
    factor = spec.conversions.get(unit)
    return None if factor is None else value * factor


@dataclass(slots=True)
class Lab:
    key: str
    loinc: str
    value: float
    unit: str
    effective: str
    observation_id: str


@dataclass(slots=True)
class Vital:
    key: str
    loinc: str
    value: float
    unit: str
    effective: str


@dataclass(slots=True)
class Coded:
    system: str
    code: str
    display: str


@dataclass(slots=True)
class Note:
    id: str
    date: str
    text: str


@dataclass
class PatientState:
    patient_id: str = ""  # FHIR logical id (no "Patient/")
    gender: str = ""
    birth_date: str = ""
    labs: dict[str, Lab] = field(default_factory=dict)  # analyte key -> latest result
    vitals: dict[str, Vital] = field(default_factory=dict)  # vital key -> latest
    conditions: dict[str, Coded] = field(default_factory=dict)  # Condition.id -> code (active ones)
    medications: dict[str, Coded] = field(default_factory=dict)  # MedicationRequest.id -> code (active ones)
    notes: list[Note] = field(default_factory=list)  # newest last, at most MAX_NOTES
    unmapped: dict[str, str] = field(default_factory=dict)  # "loinc|unit" -> reason, for the explanation
    versions: dict[str, str] = field(default_factory=dict)  # "Type/id" -> content hash: repeats change nothing
    evaluated: str = ""  # fingerprint at the last evaluation
    evaluations: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> PatientState:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(
            patient_id=raw["patient_id"],
            gender=raw["gender"],
            birth_date=raw["birth_date"],
            labs={k: Lab(**v) for k, v in raw["labs"].items()},
            vitals={k: Vital(**v) for k, v in raw["vitals"].items()},
            conditions={k: Coded(**v) for k, v in raw["conditions"].items()},
            medications={k: Coded(**v) for k, v in raw["medications"].items()},
            notes=[Note(**n) for n in raw["notes"]],
            unmapped=raw["unmapped"],
            versions=raw["versions"],
            evaluated=raw["evaluated"],
            evaluations=raw["evaluations"],
        )

    # -- what evaluation reads -----------------------------------------------------------------------------------

    def note_text(self) -> str:
        """The recent notes, oldest first, as one text."""
        return "\n".join(n.text for n in self.notes)

    def lab_values(self) -> dict[str, float]:
        return {k: lab.value for k, lab in self.labs.items()}

    def fingerprint(self) -> str:
        """Changes exactly when an evaluation could change: notes, lab categories and 5 % moves, abnormal vitals,
        active conditions and medications."""
        labs = sorted((k, round(math.log(max(lab.value, 1e-9)) / LAB_BUCKET)) for k, lab in self.labs.items())
        flags = sorted(h for h, _ in self.phenotypes_from_measurements())
        parts = {
            "notes": [hashlib.sha256(n.text.encode()).hexdigest()[:16] for n in self.notes],
            "labs": labs,
            "flags": flags,
            "conditions": sorted({f"{c.system}|{c.code}" for c in self.conditions.values()}),
            "medications": sorted({f"{m.system}|{m.code}" for m in self.medications.values()}),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def needs_evaluation(self) -> bool:
        return bool(self.labs or self.notes) and self.fingerprint() != self.evaluated

    def phenotypes_from_measurements(self) -> list[tuple[str, str]]:
        """(HPO id, why) for abnormal labs and vital signs."""
        out: list[tuple[str, str]] = []
        for lab in self.labs.values():
            finding = classify(LabObservation(lab.loinc, lab.value, lab.unit, lab.observation_id))
            if isinstance(finding, LabPhenotype):
                out.append((finding.hpo_id, f"{lab.key} {lab.value:g} {lab.unit} ({finding.direction})"))
        for vital in self.vitals.values():
            spec = VITALS[vital.loinc]
            if spec.low is not None and spec.low_hpo and vital.value < spec.low:
                out.append((spec.low_hpo, f"{vital.key} {vital.value:g} {vital.unit} (low)"))
            elif spec.high is not None and spec.high_hpo and vital.value > spec.high:
                out.append((spec.high_hpo, f"{vital.key} {vital.value:g} {vital.unit} (high)"))
        return out


# -- applying resources ------------------------------------------------------------------------------------------


def content_hash(resource: Mapping[str, Any]) -> str:
    body = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def _codings(concept: Any) -> list[dict[str, Any]]:
    return [c for c in (concept or {}).get("coding", []) if isinstance(c, dict)]


def _first_coded(concept: Any) -> Coded:
    codings = _codings(concept)
    if codings:
        c = codings[0]
        return Coded(c.get("system", ""), c.get("code", ""), c.get("display") or concept.get("text", ""))
    return Coded("", "", (concept or {}).get("text", ""))


def _status(concept: Any) -> str:
    codings = _codings(concept)
    return str(codings[0].get("code", "")) if codings else ""


def _effective(resource: Mapping[str, Any]) -> str:
    return str(
        resource.get("effectiveDateTime")
        or (resource.get("effectivePeriod") or {}).get("start")
        or resource.get("issued")
        or resource.get("date")
        or ""
    )


def _newer(effective: str, current: str) -> bool:
    # ISO 8601 instants of one source compare as strings; a result without a time never replaces a dated one.
    return not current or (bool(effective) and effective >= current)


def _apply_observation(state: PatientState, resource: Mapping[str, Any]) -> None:
    effective = _effective(resource)
    if resource.get("status") in ("entered-in-error", "cancelled"):
        state.labs = {k: v for k, v in state.labs.items() if v.observation_id != resource["id"]}
        return
    measured: list[tuple[str, Mapping[str, Any]]] = [
        (c.get("code", ""), resource["valueQuantity"])
        for c in _codings(resource.get("code"))
        if c.get("system") == LOINC and isinstance(resource.get("valueQuantity"), dict)
    ]
    for component in resource.get("component", []) or []:
        if isinstance(component.get("valueQuantity"), dict):
            measured += [
                (c.get("code", ""), component["valueQuantity"])
                for c in _codings(component.get("code"))
                if c.get("system") == LOINC
            ]
    for loinc, quantity in measured:
        if not isinstance(quantity.get("value"), int | float):
            continue
        value, unit = float(quantity["value"]), str(quantity.get("code") or quantity.get("unit") or "")
        if loinc in VITALS:
            spec = VITALS[loinc]
            converted = _vital_value(spec, value, unit)
            if converted is None:
                state.unmapped[f"{loinc}|{unit}"] = "unknown-unit"
            elif _newer(effective, state.vitals[spec.key].effective if spec.key in state.vitals else ""):
                state.vitals[spec.key] = Vital(spec.key, loinc, round(converted, 4), spec.unit, effective)
            continue
        lab = normalise(loinc, value, unit)
        if not isinstance(lab, NormalisedLab):
            state.unmapped[f"{loinc}|{unit}"] = lab.reason
            continue
        current = state.labs.get(lab.key)
        if current is None or _newer(effective, current.effective):
            state.labs[lab.key] = Lab(lab.key, lab.loinc, round(lab.value, 6), lab.unit, effective, resource["id"])


def _note_text(resource: Mapping[str, Any]) -> str | None:
    """Text of a DocumentReference's plain-text attachment (inline `data`, base64)."""
    for content in resource.get("content", []) or []:
        attachment = content.get("attachment") or {}
        kind = str(attachment.get("contentType", "")).split(";")[0].strip()
        if kind in NOTE_TYPES and attachment.get("data"):
            try:
                return base64.b64decode(attachment["data"], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


# What the state keeps: a whole EHR record (every R4 type) arrives on the stream; the rest is not remembered.
FOLDED_TYPES = frozenset(
    {"Patient", "Observation", "Condition", "MedicationRequest", "MedicationStatement", "DocumentReference"}
)


def apply(state: PatientState, resource_type: str, resource: Mapping[str, Any], deleted: bool = False) -> bool:
    """Fold one resource into the state; False when it changed nothing (seen before, or irrelevant)."""
    if resource_type not in FOLDED_TYPES:
        return False  # a Claim, an Immunization...: nothing evaluation reads, and no version to remember
    ref = f"{resource_type}/{resource.get('id', '')}"
    digest = "deleted" if deleted else content_hash(resource)
    if state.versions.get(ref) == digest:
        return False
    state.versions[ref] = digest
    rid = str(resource.get("id", ""))
    if resource_type == "Patient":
        state.patient_id, state.gender = rid, str(resource.get("gender", ""))
        state.birth_date = str(resource.get("birthDate", ""))
    elif resource_type == "Observation":
        if deleted:
            state.labs = {k: v for k, v in state.labs.items() if v.observation_id != rid}
        else:
            _apply_observation(state, resource)
    elif resource_type == "Condition":
        state.conditions.pop(rid, None)
        active = _status(resource.get("clinicalStatus")) in ACTIVE_CONDITION
        if not deleted and active and _status(resource.get("verificationStatus")) not in WITHDRAWN:
            state.conditions[rid] = _first_coded(resource.get("code"))
    elif resource_type in ("MedicationRequest", "MedicationStatement"):
        state.medications.pop(rid, None)
        if not deleted and resource.get("status") in ACTIVE_MEDICATION:
            state.medications[rid] = _first_coded(resource.get("medicationCodeableConcept"))
    elif resource_type == "DocumentReference":
        state.notes = [n for n in state.notes if n.id != rid]
        text = None if deleted or resource.get("status") == "entered-in-error" else _note_text(resource)
        if text:
            state.notes.append(Note(rid, str(resource.get("date", "")), text))
            state.notes = sorted(state.notes, key=lambda n: (n.date, n.id))[-MAX_NOTES:]
    else:
        return False
    return True


def parse_event(event: fhir_pb2.FhirResourceEvent) -> tuple[dict[str, Any], list[str]]:
    """The event's resource, parsed once, and what is wrong with the event (empty when it can be applied)."""
    problems = []
    if not event.resource_type or not event.resource_id:
        problems.append("resource_type and resource_id are required")
    try:
        resource = json.loads(event.resource_json)
    except ValueError as exc:
        return {}, [*problems, f"resource_json is not JSON: {exc}"]
    if not isinstance(resource, dict) or resource.get("resourceType") != event.resource_type:
        problems.append("resource_json is not a resource of the event's resource_type")
    elif resource.get("id") != event.resource_id:
        problems.append("resource_json id differs from resource_id")
    if event.patient_reference and not event.patient_reference.startswith("Patient/"):
        problems.append("patient_reference must be Patient/<id>")
    return (resource if isinstance(resource, dict) else {}), problems
