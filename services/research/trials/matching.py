"""Parsed criteria checked against a patient's `Timeline` (pure, no torch): a verdict per criterion with the FHIR
references it rests on, and a trial-level match that can be updated from the aspects a new resource touched.

Verdicts say whether the criterion's *statement* holds ("met"), does not ("not-met"), cannot be told from the record
("unknown") or is contradicted by the record itself ("conflicting"); for an exclusion, "met" means the patient has
the excluding feature. Conditions and medications are read closed-world (a record with no such Condition or
MedicationRequest is "not-met": Synthea histories are complete), labs open-world (no value in the window is
"unknown"). Times are measured from the record's latest time (`Timeline.as_of`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from services.research.timeline import ACTIVE_MEDICATION, ICD10CM, WITHDRAWN, Entry, Timeline
from services.research.trials import concepts
from services.research.trials.criteria import DAY, Criterion, ParsedTrial

Status = Literal["met", "not-met", "unknown", "conflicting"]
# Synthea renews chronic prescriptions about yearly and marks every earlier order "stopped"; an order authored
# within this many days is read as a current treatment.
CURRENT_PRESCRIPTION_DAYS = 400.0
_CLOSED = frozenset({"cancelled", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one criterion; `evidence` is (FHIR reference, what it says), newest first."""

    criterion_id: str
    status: Status
    evidence: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion_id": self.criterion_id,
            "status": self.status,
            "evidence": [list(e) for e in self.evidence],
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Verdict:
        evidence = tuple((str(r), str(t)) for r, t in raw.get("evidence", ()))
        return cls(str(raw["criterion_id"]), raw["status"], evidence, str(raw.get("reason", "")))


@dataclass(frozen=True, slots=True)
class Match:
    """A patient against one trial version.

    `eligible`: every inclusion sentence met and no exclusion sentence met or conflicting. A sentence's criteria
    all have to hold for the sentence to hold. `score` = (inclusion sentences met + exclusion sentences not met) /
    sentences, the share of the protocol's criteria already in the patient's favour. `unmet` lists the criteria
    that rule the patient out, `unknown` those a coordinator still has to check (unknown or conflicting, in a
    sentence not already decided against). `recomputed` lists the criteria this call evaluated.
    """

    trial_id: str
    version: int
    patient_id: str
    as_of: float
    verdicts: tuple[Verdict, ...]
    eligible: bool
    score: float
    unmet: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    recomputed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def candidate(self) -> bool:
        """Worth a coordinator's look: nothing rules the patient out (eligible, or only unknowns left)."""
        return not self.unmet

    def verdict(self, criterion_id: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.criterion_id == criterion_id), None)

    def statuses(self) -> tuple[tuple[str, str], ...]:
        """(criterion id, status) of every verdict: what a change of verdict is judged by."""
        return tuple((v.criterion_id, v.status) for v in self.verdicts)

    def document(self, patient_id: str = "") -> dict[str, Any]:
        """The match as a JSON-ready dict (the body of a match record)."""
        raw = self._raw()
        raw["patient_id"] = patient_id or self.patient_id
        return raw

    def to_json(self) -> str:
        return json.dumps(self._raw(), separators=(",", ":"))

    def _raw(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "version": self.version,
            "patient_id": self.patient_id,
            "as_of": self.as_of,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "eligible": self.eligible,
            "score": self.score,
            "unmet": list(self.unmet),
            "unknown": list(self.unknown),
        }

    def to_raw(self) -> dict[str, Any]:
        return self._raw()

    @classmethod
    def from_json(cls, text: str) -> Match:
        return cls.from_raw(json.loads(text))

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Match:
        return cls(
            raw["trial_id"],
            int(raw["version"]),
            raw.get("patient_id", ""),
            float(raw["as_of"]),
            tuple(Verdict.from_dict(v) for v in raw["verdicts"]),
            bool(raw["eligible"]),
            float(raw["score"]),
            tuple(raw.get("unmet", ())),
            tuple(raw.get("unknown", ())),
        )


# -- one criterion ----------------------------------------------------------------------------------------------
def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t, tz=UTC).date().isoformat() if t is not None else "undated"


def _negate(verdict: Verdict, negated: bool) -> Verdict:
    if not negated or verdict.status not in ("met", "not-met"):
        return verdict
    flipped: Status = "not-met" if verdict.status == "met" else "met"
    return Verdict(verdict.criterion_id, flipped, verdict.evidence, verdict.reason)


def evaluate(criterion: Criterion, timeline: Timeline) -> Verdict:
    """The criterion's statement against the timeline, negation applied."""
    if criterion.type == "age":
        return _age(criterion, timeline)
    if criterion.type == "sex":
        return _sex(criterion, timeline)
    if criterion.type == "pregnancy":
        return _negate(_pregnancy(criterion, timeline), criterion.negated)
    if criterion.type == "condition":
        return _negate(_condition(criterion, timeline), criterion.negated)
    if criterion.type == "medication":
        return _negate(_medication(criterion, timeline), criterion.negated)
    if criterion.type == "lab":
        if criterion.sex and timeline.sex in ("male", "female") and timeline.sex != criterion.sex:
            reason = f"threshold for {criterion.sex} patients only"
            return Verdict(criterion.id, "met", ((f"Patient/{timeline.patient_id}", f"sex {timeline.sex}"),), reason)
        if criterion.sex and timeline.sex not in ("male", "female"):
            return Verdict(criterion.id, "unknown", reason="sex-specific threshold, sex not recorded")
        return _negate(_lab(criterion, timeline), criterion.negated)
    return Verdict(criterion.id, "unknown", reason="criterion not understood: for a coordinator to check")


def _compare(value: float, comparator: str, low: float | None, high: float | None) -> bool:
    if comparator == "between":
        return (low is None or value >= low) and (high is None or value <= high)
    if comparator == ">=":
        return low is not None and value >= low
    if comparator == ">":
        return low is not None and value > low
    if comparator == "<=":
        return high is not None and value <= high
    if comparator == "<":
        return high is not None and value < high
    return False


def _age(criterion: Criterion, timeline: Timeline) -> Verdict:
    age = timeline.age_at()
    if age is None:
        return Verdict(criterion.id, "unknown", reason="no birth date")
    years = math.floor(age)
    ok = _compare(years, criterion.comparator, criterion.low, criterion.high)
    evidence = ((f"Patient/{timeline.patient_id}", f"age {years} on {_day(timeline.as_of)}"),)
    return Verdict(criterion.id, "met" if ok else "not-met", evidence)


def _sex(criterion: Criterion, timeline: Timeline) -> Verdict:
    if timeline.sex not in ("male", "female"):
        return Verdict(criterion.id, "unknown", reason="administrative gender not male or female")
    evidence = ((f"Patient/{timeline.patient_id}", f"sex {timeline.sex}"),)
    return Verdict(criterion.id, "met" if timeline.sex == criterion.sex else "not-met", evidence)


def _has_code(entry: Entry, codes: Iterable[tuple[str, str]]) -> bool:
    for system, code in codes:
        if entry.has_code(system, code):
            return True
        # An ICD-10-CM category ("E11") covers its subcodes ("E11.9").
        if system == ICD10CM and "." not in code:
            own = [c for s, c in entry.codes if s == ICD10CM] + ([entry.code] if entry.system == ICD10CM else [])
            if any(c.startswith(code + ".") for c in own):
                return True
    return False


def _known(timeline: Timeline) -> bool:
    return bool(timeline.birth_date or timeline.conditions or timeline.medications)


def _condition_entry_text(e: Entry) -> str:
    ended = f", ended {_day(e.end)}" if e.end is not None else ""
    return f"{e.display} since {_day(e.start)} ({e.status or 'active'}{ended})"


def _condition(criterion: Criterion, timeline: Timeline) -> Verdict:
    if not _known(timeline):
        return Verdict(criterion.id, "unknown", reason="no record of this patient")
    entries = [e for e in timeline.conditions.values() if _has_code(e, criterion.codes)]
    withdrawn = [e for e in entries if e.status in WITHDRAWN]
    live = [e for e in entries if e.status not in WITHDRAWN]
    t = timeline.as_of
    if criterion.timing == "current":
        qualifying = [e for e in live if e.active_at(t)]
    elif criterion.timing == "window" and criterion.window_days is not None:
        since = t - criterion.window_days * DAY
        qualifying = [e for e in live if e.start is not None and since <= e.start <= t]
    else:
        qualifying = live
    if criterion.min_duration_days is not None:
        cutoff = t - criterion.min_duration_days * DAY
        qualifying = [e for e in qualifying if e.start is not None and e.start <= cutoff]
    qualifying.sort(key=lambda e: -(e.start or 0.0))
    evidence = tuple((e.id, _condition_entry_text(e)) for e in qualifying[:5])
    if qualifying and withdrawn:
        refuted = tuple((e.id, f"{e.display}: {e.status}") for e in withdrawn[:3])
        return Verdict(criterion.id, "conflicting", evidence + refuted, "recorded and also refuted")
    if qualifying:
        return Verdict(criterion.id, "met", evidence)
    seen = tuple((e.id, _condition_entry_text(e)) for e in sorted(live, key=lambda e: -(e.start or 0.0))[:3])
    return Verdict(criterion.id, "not-met", seen, "no qualifying Condition" if not seen else "outside the time asked")


def _is_drug(entry: Entry, criterion: Criterion) -> bool:
    """Listed RxNorm code, or an ingredient word in the display (Synthea codes clinical drugs, not classes)."""
    if _has_code(entry, criterion.codes):
        return True
    return bool(criterion.ingredients) and not set(criterion.ingredients).isdisjoint(
        concepts.display_words(entry.display)
    )


def _current_prescription(e: Entry, t: float) -> bool:
    if e.status in _CLOSED:
        return False
    if e.end is not None:
        return e.start is not None and e.start <= t < e.end
    recent = e.start is not None and t - CURRENT_PRESCRIPTION_DAYS * DAY <= e.start <= t
    return e.status in ACTIVE_MEDICATION or recent


def _medication(criterion: Criterion, timeline: Timeline) -> Verdict:
    if not _known(timeline):
        return Verdict(criterion.id, "unknown", reason="no record of this patient")
    entries = [e for e in timeline.medications.values() if e.status not in _CLOSED and _is_drug(e, criterion)]
    t = timeline.as_of
    if criterion.timing == "current":
        qualifying = [e for e in entries if _current_prescription(e, t)]
    elif criterion.timing == "window" and criterion.window_days is not None:
        since = t - criterion.window_days * DAY
        qualifying = [
            e for e in entries if (e.start is not None and since <= e.start <= t) or _current_prescription(e, t)
        ]
    else:
        qualifying = entries
    if qualifying and criterion.min_duration_days is not None:
        # Treated for long enough: the first order of the drug class is at least that old (renewals continue it).
        first = min((e.start for e in entries if e.start is not None), default=None)
        if first is None or first > t - criterion.min_duration_days * DAY:
            qualifying = []
    qualifying.sort(key=lambda e: -(e.start or 0.0))
    evidence = tuple((e.id, f"{e.display} ordered {_day(e.start)} ({e.status})") for e in qualifying[:5])
    if qualifying:
        return Verdict(criterion.id, "met", evidence)
    seen = tuple(
        (e.id, f"{e.display} ordered {_day(e.start)} ({e.status})")
        for e in sorted(entries, key=lambda e: -(e.start or 0.0))[:3]
    )
    return Verdict(criterion.id, "not-met", seen, "no qualifying MedicationRequest")


def _pregnancy(criterion: Criterion, timeline: Timeline) -> Verdict:
    if timeline.sex == "male":
        return Verdict(criterion.id, "not-met", ((f"Patient/{timeline.patient_id}", "sex male"),))
    if timeline.sex != "female" or not _known(timeline):
        return Verdict(criterion.id, "unknown", reason="sex not recorded")
    t = timeline.as_of
    entries = [e for e in timeline.conditions.values() if _has_code(e, criterion.codes) and e.status not in WITHDRAWN]
    current = [e for e in entries if e.active_at(t)]
    if current:
        return Verdict(criterion.id, "met", tuple((e.id, _condition_entry_text(e)) for e in current[:3]))
    recent = [e for e in entries if e.end is not None and t - 365.25 * DAY <= e.end <= t]
    words = criterion.text.lower()
    if recent and any(w in words for w in ("breastfeeding", "breast-feeding", "lactating")):
        evidence = tuple((e.id, _condition_entry_text(e)) for e in recent[:3])
        return Verdict(criterion.id, "unknown", evidence, "pregnancy ended within a year: breastfeeding not recorded")
    if "planning" in words or "intending" in words:
        return Verdict(criterion.id, "unknown", reason="pregnancy plans are not recorded")
    return Verdict(criterion.id, "not-met", reason="no current pregnancy recorded")


def _lab_values(concept: concepts.Concept, timeline: Timeline) -> list[tuple[Entry, float]]:
    values = []
    for _, loinc in concept.codes:
        for e in timeline.lab_values(loinc):
            if e.value is None:
                continue
            canonical = concepts.to_canonical(concept, e.value, e.unit)
            if canonical is not None:
                values.append((e, canonical))
    values.sort(key=lambda p: p[0].start or 0.0)
    return values


def _threshold(concept: concepts.Concept, value: float, unit: str) -> float | None:
    """A threshold in the concept's unit, to three significant figures when converted: registries state converted
    thresholds from equivalence tables (53 mmol/mol is HbA1c 7.0 %, not 7.0004 %)."""
    converted = concepts.to_canonical(concept, value, unit)
    if converted is None or converted == value or converted == 0:
        return converted
    return round(converted, 2 - math.floor(math.log10(abs(converted))))


def _one_lab(criterion: Criterion, concept: concepts.Concept, timeline: Timeline) -> Verdict:
    low = None if criterion.low is None else _threshold(concept, criterion.low, criterion.unit)
    high = None if criterion.high is None else _threshold(concept, criterion.high, criterion.unit)
    if (criterion.low is not None and low is None) or (criterion.high is not None and high is None):
        return Verdict(criterion.id, "unknown", reason=f"threshold unit {criterion.unit} not convertible")
    values = _lab_values(concept, timeline)
    if not values:
        return Verdict(criterion.id, "unknown", reason=f"no {concept.name} result")
    t = timeline.as_of
    if criterion.timing == "window" and criterion.window_days is not None:
        since = t - criterion.window_days * DAY
        chosen = [(e, v) for e, v in values if e.start is not None and since <= e.start <= t]
        if not chosen:
            latest = values[-1][0]
            return Verdict(criterion.id, "unknown", ((latest.id, _lab_text(concept, latest)),), "none in the window")
    else:
        last_day = _day(values[-1][0].start)
        chosen = [(e, v) for e, v in values if _day(e.start) == last_day]
    results = [_compare(v, criterion.comparator, low, high) for _, v in chosen]
    evidence = tuple((e.id, _lab_text(concept, e)) for e, _ in reversed(chosen[-5:]))
    if all(results):
        return Verdict(criterion.id, "met", evidence)
    if not any(results):
        return Verdict(criterion.id, "not-met", evidence)
    return Verdict(criterion.id, "conflicting", evidence, "results on both sides of the threshold")


def _lab_text(concept: concepts.Concept, e: Entry) -> str:
    return f"{concept.name} {e.value:g} {e.unit} on {_day(e.start)}"


def _lab(criterion: Criterion, timeline: Timeline) -> Verdict:
    found = [concepts.by_name(n) for n in criterion.concept.split(" or ")]
    labs = [c for c in found if c is not None and c.kind == "lab"]
    if not labs:
        return Verdict(criterion.id, "unknown", reason=f"lab {criterion.concept} not in the lexicon")
    verdicts = [_one_lab(criterion, c, timeline) for c in labs]
    # "ALT or AST above 120 U/L": any one met is enough.
    for status in ("met", "conflicting", "unknown"):
        hit = [v for v in verdicts if v.status == status]
        if hit:
            evidence = tuple(e for v in hit for e in v.evidence)
            return Verdict(criterion.id, hit[0].status, evidence, hit[0].reason)
    return Verdict(criterion.id, "not-met", tuple(e for v in verdicts for e in v.evidence))


# -- one trial --------------------------------------------------------------------------------------------------
def sentence_status(statuses: Sequence[Status]) -> Status:
    """A sentence's criteria all have to hold: any not-met decides; else conflicting, else unknown, else met."""
    for status in ("not-met", "conflicting", "unknown"):
        if status in statuses:
            return status  # type: ignore[return-value]
    return "met"


def _reusable(criterion: Criterion, previous: Match, touched: frozenset[str], as_of: float) -> bool:
    if criterion.type == "age":
        return False  # a subtraction: always recomputed, so a birthday is never missed
    if criterion.aspects() & touched:
        return False
    return not (criterion.time_dependent and as_of != previous.as_of)


def match(
    trial: ParsedTrial,
    timeline: Timeline,
    previous: Match | None = None,
    touched: frozenset[str] | None = None,
) -> Match:
    """Every criterion of the trial against the timeline; with `previous` (same trial version) and `touched` (what
    the last folds returned), only criteria reading a touched aspect, age criteria, and time-dependent criteria
    when the record's latest time moved are evaluated again."""
    old: dict[str, Verdict] = {}
    if previous is not None and touched is not None and previous.version == trial.version:
        old = {v.criterion_id: v for v in previous.verdicts}
    verdicts: list[Verdict] = []
    recomputed: list[str] = []
    for criterion in trial.criteria:
        kept = old.get(criterion.id)
        if kept is not None and previous is not None and touched is not None:
            if _reusable(criterion, previous, touched, timeline.as_of):
                verdicts.append(kept)
                continue
        verdicts.append(evaluate(criterion, timeline))
        recomputed.append(criterion.id)
    return _summarise(trial, timeline, verdicts, tuple(recomputed))


def _summarise(trial: ParsedTrial, timeline: Timeline, verdicts: list[Verdict], recomputed: tuple[str, ...]) -> Match:
    by_sentence: dict[str, list[tuple[Criterion, Verdict]]] = {}
    for criterion, verdict in zip(trial.criteria, verdicts, strict=True):
        by_sentence.setdefault(criterion.sentence_id or criterion.id, []).append((criterion, verdict))
    unmet: list[str] = []
    unknown: list[str] = []
    favourable = 0
    eligible = True
    for pairs in by_sentence.values():
        status = sentence_status([v.status for _, v in pairs])
        inclusion = pairs[0][0].section == "inclusion"
        if inclusion:
            favourable += status == "met"
            eligible &= status == "met"
            if status == "not-met":
                unmet += [c.id for c, v in pairs if v.status == "not-met"]
        else:
            favourable += status == "not-met"
            eligible &= status in ("not-met", "unknown")
            if status == "met":
                unmet += [c.id for c, _ in pairs]
        if status in ("unknown", "conflicting"):
            unknown += [c.id for c, v in pairs if v.status in ("unknown", "conflicting")]
    score = favourable / len(by_sentence) if by_sentence else 0.0
    return Match(
        trial.trial_id,
        trial.version,
        timeline.patient_id,
        timeline.as_of,
        tuple(verdicts),
        eligible and bool(by_sentence),
        round(score, 4),
        tuple(unmet),
        tuple(unknown),
        recomputed,
    )
