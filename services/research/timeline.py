"""A patient's coded clinical timeline folded from FHIR R4 resources (pure): what trial matching and adverse-drug-
reaction assessment read.

Kept per patient: birth date and sex; every Condition (SNOMED/ICD-10-CM codings, onset, abatement, status); every
MedicationRequest (RxNorm coding, authored date, status, strength parsed from the display); and the latest
`MAX_PER_LAB` quantitative Observations per LOINC code. `fold` returns the *aspects* a resource touched
("condition", "medication", "lab:<loinc>", "demographics"), so a consumer re-evaluates only what depends on them.
Times are epoch seconds; `as_of` is the latest clinical time the timeline has seen (Synthea histories end in the
past, so "within the last 6 months" is measured from the record, not from the wall clock).
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
MAX_PER_LAB = 12
ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
ACTIVE_MEDICATION = frozenset({"active", "on-hold", "draft"})
WITHDRAWN = frozenset({"entered-in-error", "refuted"})
DEMOGRAPHICS = "demographics"
CONDITION = "condition"
MEDICATION = "medication"
_STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(MG|MCG|UNT|ML|G)\b(?!/)", re.IGNORECASE)


def epoch(value: Any) -> float | None:
    """FHIR date or dateTime to epoch seconds (a bare date is midnight UTC); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        if len(value) <= 10:
            parts = [int(p) for p in value.split("-")]
            while len(parts) < 3:
                parts.append(1)
            return datetime(parts[0], parts[1], parts[2], tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except ValueError:
        return None


def codings(concept: Any) -> list[tuple[str, str, str]]:
    """(system, code, display) of every coding in a CodeableConcept."""
    out = []
    for c in (concept or {}).get("coding", []) if isinstance(concept, dict) else []:
        if isinstance(c, dict) and c.get("code"):
            out.append((str(c.get("system", "")), str(c["code"]), str(c.get("display", ""))))
    return out


def _status(concept: Any, default: str) -> str:
    found = codings(concept)
    return found[0][1] if found else default


@dataclass(slots=True)
class Entry:
    """One dated, coded fact; `id` is the FHIR reference ("Condition/abc"), the evidence a verdict cites."""

    id: str
    system: str
    code: str
    display: str
    start: float | None
    end: float | None = None
    status: str = ""
    value: float | None = None
    unit: str = ""
    codes: list[list[str]] = field(default_factory=list)  # every [system, code] of the concept

    def has_code(self, system: str, code: str) -> bool:
        return any(s == system and c == code for s, c in self.codes) or (self.system == system and self.code == code)

    def active_at(self, t: float) -> bool:
        if self.status in WITHDRAWN:
            return False
        started = self.start is None or self.start <= t
        if self.end is None:  # no end date: a stopped order or a resolved condition has ended at an unknown time
            return started and (self.status in ACTIVE_CONDITION or self.status in ACTIVE_MEDICATION or not self.status)
        return started and self.end > t


@dataclass(slots=True)
class Timeline:
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    deceased: bool = False
    as_of: float = 0.0
    conditions: dict[str, Entry] = field(default_factory=dict)
    medications: dict[str, Entry] = field(default_factory=dict)
    labs: dict[str, list[Entry]] = field(default_factory=dict)  # LOINC -> oldest..newest

    # -- reading -------------------------------------------------------------------------------------------------
    def age_at(self, t: float | None = None) -> float | None:
        if not self.birth_date:
            return None
        born = epoch(self.birth_date)
        if born is None:
            return None
        return ((self.as_of if t is None else t) - born) / (365.2425 * 86400)

    def active_conditions(self, t: float | None = None) -> list[Entry]:
        at = self.as_of if t is None else t
        return [c for c in self.conditions.values() if c.active_at(at)]

    def lab_values(self, loinc: str) -> list[Entry]:
        return self.labs.get(loinc, [])

    def latest(self, loinc: str, before: float | None = None) -> Entry | None:
        for e in reversed(self.labs.get(loinc, [])):
            if before is None or (e.start is not None and e.start <= before):
                return e
        return None

    # -- folding -------------------------------------------------------------------------------------------------
    def fold(self, resource_type: str, resource: Mapping[str, Any], deleted: bool = False) -> frozenset[str]:
        """Apply one resource; the aspects it changed (empty when it changed nothing this timeline keeps)."""
        rid = f"{resource_type}/{resource.get('id', '')}"
        if resource_type == "Patient":
            if deleted:
                return frozenset()
            before = (self.birth_date, self.sex, self.deceased)
            self.patient_id = self.patient_id or str(resource.get("id", ""))
            self.birth_date = str(resource.get("birthDate", self.birth_date) or "")
            self.sex = str(resource.get("gender", self.sex) or "")
            self.deceased = bool(resource.get("deceasedBoolean") or resource.get("deceasedDateTime"))
            return frozenset({DEMOGRAPHICS}) if before != (self.birth_date, self.sex, self.deceased) else frozenset()
        if resource_type == "Condition":
            return self._keep(self.conditions, rid, None if deleted else _condition(rid, resource), CONDITION)
        if resource_type == "MedicationRequest":
            return self._keep(self.medications, rid, None if deleted else _medication(rid, resource), MEDICATION)
        if resource_type == "Observation":
            return self._observation(rid, resource, deleted)
        return frozenset()

    def _keep(self, into: dict[str, Entry], rid: str, entry: Entry | None, aspect: str) -> frozenset[str]:
        old = into.get(rid)
        if entry is None:
            return frozenset({aspect}) if into.pop(rid, None) is not None else frozenset()
        if old == entry:
            return frozenset()
        into[rid] = entry
        self._advance(entry.start, entry.end)
        return frozenset({aspect})

    def _observation(self, rid: str, resource: Mapping[str, Any], deleted: bool) -> frozenset[str]:
        quantity = resource.get("valueQuantity")
        loincs = [c for s, c, _ in codings(resource.get("code")) if s == LOINC]
        if not loincs:
            return frozenset()
        loinc = loincs[0]
        series = self.labs.setdefault(loinc, [])
        kept = [e for e in series if e.id != rid]
        changed = len(kept) != len(series)
        usable = isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float)
        if not deleted and usable and isinstance(quantity, dict) and resource.get("status") not in WITHDRAWN:
            when = epoch(resource.get("effectiveDateTime") or resource.get("issued"))
            entry = Entry(
                rid,
                LOINC,
                loinc,
                codings(resource.get("code"))[0][2],
                when,
                value=float(quantity["value"]),
                unit=str(quantity.get("code") or quantity.get("unit") or ""),
                status=str(resource.get("status", "")),
            )
            if entry in series:
                return frozenset()
            kept.append(entry)
            kept.sort(key=lambda e: e.start or 0.0)
            self._advance(when, None)
            changed = True
        if not changed:
            return frozenset()
        self.labs[loinc] = kept[-MAX_PER_LAB:]
        if not self.labs[loinc]:
            del self.labs[loinc]
        return frozenset({f"lab:{loinc}"})

    def _advance(self, *times: float | None) -> None:
        for t in times:
            # 0.0 is "nothing seen yet": a history that ended before 1970 has negative epoch times
            if t is not None and (t > self.as_of or self.as_of == 0.0):
                self.as_of = t

    # -- storage ---------------------------------------------------------------------------------------------------
    def to_raw(self) -> dict[str, Any]:
        """JSON-ready, each entry as a row of its fields in `ENTRY_FIELDS` order (compact, and several times faster
        than `dataclasses.asdict`, which dominated a re-match across many patients)."""
        return {
            "patient_id": self.patient_id,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "deceased": self.deceased,
            "as_of": self.as_of,
            "conditions": [_row(e) for e in self.conditions.values()],
            "medications": [_row(e) for e in self.medications.values()],
            "labs": {k: [_row(e) for e in v] for k, v in self.labs.items()},
        }

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Timeline:
        return cls(
            patient_id=raw["patient_id"],
            birth_date=raw["birth_date"],
            sex=raw["sex"],
            deceased=raw["deceased"],
            as_of=raw["as_of"],
            conditions={row[0]: Entry(*row) for row in raw["conditions"]},
            medications={row[0]: Entry(*row) for row in raw["medications"]},
            labs={k: [Entry(*row) for row in v] for k, v in raw["labs"].items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_raw(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Timeline:
        return cls.from_raw(json.loads(text)) if text else cls()


ENTRY_FIELDS = tuple(f.name for f in fields(Entry))


def _row(e: Entry) -> list[Any]:
    return [e.id, e.system, e.code, e.display, e.start, e.end, e.status, e.value, e.unit, e.codes]


def _condition(rid: str, resource: Mapping[str, Any]) -> Entry:
    found = codings(resource.get("code"))
    preferred = next((c for c in found if c[0] in (SNOMED, ICD10CM)), found[0] if found else ("", "", ""))
    status = _status(resource.get("clinicalStatus"), "active")
    if _status(resource.get("verificationStatus"), "") in WITHDRAWN:
        status = "entered-in-error"
    return Entry(
        rid,
        preferred[0],
        preferred[1],
        preferred[2] or str((resource.get("code") or {}).get("text", "")),
        epoch(resource.get("onsetDateTime") or resource.get("recordedDate")),
        epoch(resource.get("abatementDateTime")),
        status,
        codes=[[s, c] for s, c, _ in found],
    )


def strength_mg(display: str) -> float | None:
    """The first single-ingredient strength in an RxNorm display ("Simvastatin 10 MG Oral Tablet" -> 10.0)."""
    match = _STRENGTH.search(display)
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2).upper()
    return value / 1000 if unit == "MCG" else value * 1000 if unit == "G" else value


def _medication(rid: str, resource: Mapping[str, Any]) -> Entry:
    found = codings(resource.get("medicationCodeableConcept"))
    rx = next((c for c in found if c[0] == RXNORM), found[0] if found else ("", "", ""))
    display = rx[2] or str((resource.get("medicationCodeableConcept") or {}).get("text", ""))
    status = str(resource.get("status", "active"))
    start = epoch(resource.get("authoredOn"))
    period = ((resource.get("dispenseRequest") or {}).get("validityPeriod") or {}) if resource else {}
    end = epoch(period.get("end"))
    return Entry(
        rid,
        rx[0],
        rx[1],
        display,
        start,
        end,
        status,
        value=strength_mg(display),
        unit="mg",
        codes=[[s, c] for s, c, _ in found],
    )


def event_resource(resource_json: bytes, resource_type: str) -> tuple[dict[str, Any] | None, str]:
    """The resource a FHIR event carries, or None and why not (for the dead-letter topic)."""
    try:
        resource = json.loads(resource_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"resource_json is not JSON: {exc}"
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        return None, "resource_json does not hold a resource of the event's resource_type"
    return resource, ""


def pack(text: str) -> str:
    """State as stored in a table: deflated (a long history's timeline is hundreds of kB of repetitive JSON, and a
    changelog record must stay well under Kafka's 1 MB)."""
    return "z:" + base64.b64encode(zlib.compress(text.encode(), 6)).decode()


def unpack(stored: str | None) -> str | None:
    if stored and stored.startswith("z:"):
        return zlib.decompress(base64.b64decode(stored[2:])).decode()
    return stored


def from_resources(resources: Iterable[tuple[str, Mapping[str, Any]]]) -> Timeline:
    """Fold (resource_type, resource) pairs of one patient, in order."""
    timeline = Timeline()
    for resource_type, resource in resources:
        timeline.fold(resource_type, resource)
    return timeline


def from_bundle(bundle: Mapping[str, Any]) -> Timeline:
    """One Synthea patient bundle (references not resolved: the timeline does not follow them)."""
    return from_resources(
        (e["resource"]["resourceType"], e["resource"]) for e in bundle.get("entry", []) if isinstance(e, dict)
    )


def today_epoch() -> float:
    return datetime.combine(date.today(), datetime.min.time(), tzinfo=UTC).timestamp()
