"""A drug start's model inputs, evidence and explanation from the patient's timeline (pure numpy: serving and
training compute them the same way, and serving never imports torch).

Only what the timeline knew at the start counts: conditions, orders and labs dated at or before the order's
`authoredOn` (labs of the prescribing encounter count as baseline), never the order itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.research.adr import drugs
from services.research.adr.drugs import CLASSES, REACTIONS, Drug
from services.research.timeline import SNOMED, Entry, Timeline

DAY = 86400.0
SEQUENCE_LENGTH = 32  # the last events before the start, oldest first, left-padded
RECENT_DAYS = 90.0  # a stopped order without an end date counts as taken this long after it was written
RENEWAL_DAYS = 400.0  # the same ingredient and strength ordered again within this is a renewal, not a start

CONDITION_GROUPS: dict[str, frozenset[str]] = {  # SNOMED CT codes Synthea writes
    "ckd": frozenset(
        {"431855005", "431856006", "433144002", "431857002", "46177005", "709044004", "127013003", "90688005"}
    ),
    "diabetes": frozenset({"44054006", "73211009", "46635009"}),
    "hypertension": frozenset({"59621000", "38341003"}),
    "heart-disease": frozenset(
        {"414545008", "22298006", "88805009", "84114007", "49436004", "401314000", "399211009", "53741008"}
    ),
    "liver-or-alcohol": frozenset({"7200002", "10939881000119105", "19943007", "235856003", "128302006", "61977001"}),
}
# LOINC codes per lab group; (reference, log2): value becomes log2(v / reference), else (v - reference) / scale
LAB_GROUPS: dict[str, tuple[str, ...]] = {
    "creatinine": ("2160-0", "38483-4"),
    "egfr": ("33914-3", "62238-1", "98979-8"),
    "alt": ("1742-6",),
    "ast": ("1920-8",),
    "ck": ("2157-6",),
    "qtc": ("8636-3",),
    "potassium": ("2823-3", "6298-4"),
}
_LAB_SCALE: dict[str, tuple[float, float | None]] = {  # group -> (reference, linear scale or None for log2)
    "creatinine": (1.0, None),
    "egfr": (90.0, None),
    "alt": (30.0, None),
    "ast": (30.0, None),
    "ck": (150.0, None),
    "qtc": (440.0, 20.0),
    "potassium": (4.2, 0.4),
}
UPPER_LIMIT = {"creatinine": 1.2, "alt": 40.0, "ast": 40.0, "ck": 200.0, "qtc": 450.0}  # reporting thresholds
EVENT_KINDS = ("condition", "medication", "lab")
SEQUENCE_FEATURES: tuple[str, ...] = (
    *(f"kind:{k}" for k in EVENT_KINDS),
    *(f"condition:{g}" for g in CONDITION_GROUPS),
    *(f"class:{c}" for c in CLASSES),
    "same-class",
    *(f"lab:{g}" for g in LAB_GROUPS),
    "lab-value",
    "log-days-before",
    "present",
)
STATIC_LABS = ("egfr", "creatinine", "alt", "potassium", "ck", "qtc")
CONCOMITANT = (
    "on-nsaid",
    "on-raas",
    "on-diuretic",
    "on-qt-drugs",
    "on-cyp3a4-inhibitor",
    "on-statin-interacting",
    "on-statin",
    "on-hepatotoxic",
    "max-concomitant-herg",
)
STATIC_FEATURES: tuple[str, ...] = (
    "age",
    "male",
    *(n for g in STATIC_LABS for n in (g, f"{g}-missing")),
    *(f"class:{c}" for c in CLASSES),
    "log2-dose-ratio",
    "dose-missing",
    "herg",
    "herg-missing",
    "known-qt",
    "cyp3a4-inhibitor",
    *CONCOMITANT,
    *(f"condition:{g}" for g in CONDITION_GROUPS),
)
_SEQ = {n: i for i, n in enumerate(SEQUENCE_FEATURES)}
_STATIC = {n: i for i, n in enumerate(STATIC_FEATURES)}


def static_index(name: str) -> int:
    return _STATIC[name]


# -- reading the timeline at a moment ---------------------------------------------------------------------------
def lab_value(group: str, value: float) -> float:
    reference, scale = _LAB_SCALE[group]
    if scale is None:
        return float(np.clip(math.log2(max(value, 1e-3) / reference), -4.0, 6.0))
    return float(np.clip((value - reference) / scale, -6.0, 6.0))


def latest_lab(timeline: Timeline, group: str, t: float) -> Entry | None:
    """The group's most recent value at or before t, over all of its LOINC codes."""
    found = [e for code in LAB_GROUPS[group] if (e := timeline.latest(code, before=t)) is not None]
    return max(found, key=lambda e: e.start or 0.0) if found else None


_GROUP_OF = {code: group for group, codes in CONDITION_GROUPS.items() for code in codes}


def condition_group(entry: Entry) -> str | None:
    if entry.system == SNOMED and entry.code in _GROUP_OF:
        return _GROUP_OF[entry.code]
    return next((_GROUP_OF[c] for s, c in entry.codes if s == SNOMED and c in _GROUP_OF), None)


def conditions_at(timeline: Timeline, t: float) -> dict[str, Entry]:
    """Group -> an active condition of that group at t (its onset at or before t)."""
    out: dict[str, Entry] = {}
    for c in timeline.conditions.values():
        group = condition_group(c)
        if group and c.start is not None and c.start <= t and c.active_at(t):
            out.setdefault(group, c)
    return out


def taking_at(order: Entry, t: float) -> bool:
    """An order counts as taken at t when active then, or written within RECENT_DAYS with no end date known."""
    if order.start is None or order.start > t:
        return False
    return order.active_at(t) or (
        order.end is None and order.status == "stopped" and t - order.start <= RECENT_DAYS * DAY
    )


def concomitant(timeline: Timeline, order: Entry) -> list[tuple[Entry, Drug]]:
    """The other catalogued drugs taken when `order` was written."""
    t = order.start or timeline.as_of
    out = []
    for m in timeline.medications.values():
        if m.id == order.id or not taking_at(m, t):
            continue
        d = drugs.classify(m)
        if d is not None:
            out.append((m, d))
    return out


def is_start_or_dose_change(timeline: Timeline, order: Entry) -> bool:
    """A catalogued drug ordered for the first time in RENEWAL_DAYS, or at another strength than its last order."""
    drug = drugs.classify(order)
    if drug is None or order.start is None:
        return False
    earlier = [
        m
        for m in timeline.medications.values()
        if m.id != order.id
        and m.start is not None
        and order.start - RENEWAL_DAYS * DAY <= m.start <= order.start
        and drugs.classify(m) == drug
    ]
    if not earlier:
        return True
    last = max(earlier, key=lambda m: (m.start or 0.0, m.id))
    return last.value != order.value


# -- inputs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str
    entry: Entry
    group: str  # condition or lab group; the drug class for medications


def history(timeline: Timeline, order: Entry) -> list[Event]:
    """Every grouped event at or before the order's time, oldest first (the order itself excluded)."""
    t = order.start if order.start is not None else timeline.as_of
    events = []
    for c in timeline.conditions.values():
        group = condition_group(c)
        if group and c.start is not None and c.start <= t:
            events.append(Event(c.start, "condition", c, group))
    for m in timeline.medications.values():
        if m.id == order.id or m.start is None or m.start > t:
            continue
        drug = drugs.classify(m)
        if drug is not None:
            events.append(Event(m.start, "medication", m, drug.drug_class))
    for group, codes in LAB_GROUPS.items():
        for code in codes:
            for e in timeline.lab_values(code):
                if e.start is not None and e.start <= t and e.value is not None:
                    events.append(Event(e.start, "lab", e, group))
    events.sort(key=lambda e: (e.t, e.entry.id))
    return events


def sequence(timeline: Timeline, order: Entry, drug: Drug) -> np.ndarray:
    """[SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)]: the last events before the order, left-padded with zeros."""
    t = order.start if order.start is not None else timeline.as_of
    rows = np.zeros((SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)), np.float32)
    events = history(timeline, order)[-SEQUENCE_LENGTH:]
    offset = SEQUENCE_LENGTH - len(events)
    for i, ev in enumerate(events):
        row = rows[offset + i]
        row[_SEQ[f"kind:{ev.kind}"]] = 1.0
        if ev.kind == "condition":
            row[_SEQ[f"condition:{ev.group}"]] = 1.0
        elif ev.kind == "medication":
            row[_SEQ[f"class:{ev.group}"]] = 1.0
            row[_SEQ["same-class"]] = float(ev.group == drug.drug_class)
        else:
            row[_SEQ[f"lab:{ev.group}"]] = 1.0
            row[_SEQ["lab-value"]] = lab_value(ev.group, ev.entry.value or 0.0)
        row[_SEQ["log-days-before"]] = math.log1p(max(t - ev.t, 0.0) / DAY) / math.log1p(3650.0)
        row[_SEQ["present"]] = 1.0
    return rows


def static(timeline: Timeline, order: Entry, drug: Drug) -> np.ndarray:
    """[len(STATIC_FEATURES)]: demographics, latest labs, the drug, what else is taken, conditions."""
    t = order.start if order.start is not None else timeline.as_of
    x = np.zeros(len(STATIC_FEATURES), np.float32)
    age = timeline.age_at(t)
    x[_STATIC["age"]] = (age or 0.0) / 100.0
    x[_STATIC["male"]] = float(timeline.sex == "male")
    for group in STATIC_LABS:
        lab = latest_lab(timeline, group, t)
        if lab is None or lab.value is None:
            x[_STATIC[f"{group}-missing"]] = 1.0
        else:
            x[_STATIC[group]] = lab_value(group, lab.value)
    x[_STATIC[f"class:{drug.drug_class}"]] = 1.0
    ratio = drugs.dose_ratio(drug, order)
    if ratio is None:
        x[_STATIC["dose-missing"]] = 1.0
    else:
        x[_STATIC["log2-dose-ratio"]] = float(np.clip(math.log2(max(ratio, 1e-3)), -4.0, 4.0))
    if drug.herg is None:
        x[_STATIC["herg-missing"]] = 1.0
    else:
        x[_STATIC["herg"]] = drug.herg
    x[_STATIC["known-qt"]] = float(drugs.KNOWN_QT in drug.roles)
    x[_STATIC["cyp3a4-inhibitor"]] = float(drugs.CYP3A4_INHIBITOR in drug.roles)
    for name, value in concomitant_counts(timeline, order).items():
        x[_STATIC[name]] = value
    for group in conditions_at(timeline, t):
        x[_STATIC[f"condition:{group}"]] = 1.0
    return x


def concomitant_counts(timeline: Timeline, order: Entry) -> dict[str, float]:
    others = [d for _, d in concomitant(timeline, order)]
    return {
        "on-nsaid": float(any(d.drug_class == "nsaid" for d in others)),
        "on-raas": float(any(drugs.RAAS in d.roles for d in others)),
        "on-diuretic": float(any(drugs.DIURETIC in d.roles for d in others)),
        "on-qt-drugs": float(len({d.ingredient for d in others if drugs.KNOWN_QT in d.roles})),
        "on-cyp3a4-inhibitor": float(any(drugs.CYP3A4_INHIBITOR in d.roles for d in others)),
        "on-statin-interacting": float(any(drugs.STATIN_INTERACTING in d.roles for d in others)),
        "on-statin": float(any(d.drug_class == "statin" for d in others)),
        "on-hepatotoxic": float(any(drugs.HEPATOTOXIC in d.roles for d in others)),
        "max-concomitant-herg": max((d.herg for d in others if d.herg is not None), default=0.0),
    }


def episode_inputs(timeline: Timeline, order: Entry) -> dict[str, np.ndarray]:
    """The model's inputs for one drug start, one row each (SEQUENCE [T, F], STATIC [S]); the drug must be
    catalogued (`drugs.classify`)."""
    drug = drugs.classify(order)
    if drug is None:
        raise ValueError(f"{order.id}: {order.display!r} is not in the drug catalogue")
    return {"SEQUENCE": sequence(timeline, order, drug)[None], "STATIC": static(timeline, order, drug)[None]}


# -- evidence and explanation ------------------------------------------------------------------------------------
def evidence(timeline: Timeline, order: Entry) -> list[tuple[str, str]]:
    """(FHIR reference, what it says) for every fact the features read: the order, latest labs, interacting
    drugs taken, risk conditions."""
    t = order.start if order.start is not None else timeline.as_of
    out = [(order.id, order.display)]
    for group in STATIC_LABS:
        lab = latest_lab(timeline, group, t)
        if lab is not None and lab.value is not None:
            out.append((lab.id, f"{group} {lab.value:g} {lab.unit}".strip()))
    for m, d in concomitant(timeline, order):
        out.append((m.id, f"taking {m.display} ({d.drug_class})"))
    for group, c in conditions_at(timeline, t).items():
        out.append((c.id, f"{group}: {c.display}"))
    return out


def risk_factors(x: np.ndarray, reaction: str) -> list[str]:
    """The listed risk factors of `reaction` present in one STATIC row, in words (also the rules-only baseline)."""

    def on(name: str) -> bool:
        return bool(x[_STATIC[name]] > 0.5)

    def lab(group: str) -> float | None:
        if x[_STATIC[f"{group}-missing"]] > 0.5:
            return None
        reference, scale = _LAB_SCALE[group]
        v = float(x[_STATIC[group]])
        return reference * 2**v if scale is None else reference + v * scale

    reasons = []
    age = float(x[_STATIC["age"]]) * 100
    ratio = 2 ** float(x[_STATIC["log2-dose-ratio"]]) if not on("dose-missing") else None
    egfr, k, ck, alt = lab("egfr"), lab("potassium"), lab("ck"), lab("alt")
    if ratio is not None and ratio > 1.01 and reaction != drugs.QT:
        reasons.append(f"dose {ratio:.1f}x the usual strength")
    if reaction == drugs.MYOPATHY:
        reasons += [f"age {age:.0f}"] if age >= 65 else []
        reasons += [f"eGFR {egfr:.0f}"] if egfr is not None and egfr < 60 else []
        reasons += ["taking a CYP3A4 inhibitor"] if on("on-cyp3a4-inhibitor") else []
        reasons += ["taking a fibrate or ciclosporin"] if on("on-statin-interacting") else []
        reasons += [f"CK {ck:.0f} U/L before the start"] if ck is not None and ck > UPPER_LIMIT["ck"] else []
    elif reaction == drugs.AKI:
        others = [n for n in ("on-nsaid", "on-raas", "on-diuretic") if on(n)]
        if others:
            label = "triple whammy: " if len(others) == 2 else ""
            reasons.append(label + "also taking " + ", ".join(n.removeprefix("on-") for n in others))
        reasons += [f"eGFR {egfr:.0f}"] if egfr is not None and egfr < 60 else []
        reasons += [f"age {age:.0f}"] if age >= 65 else []
        reasons += ["diabetes"] if on("condition:diabetes") else []
        reasons += ["heart disease"] if on("condition:heart-disease") else []
    elif reaction == drugs.HEPATOTOXICITY:
        reasons += ["liver disease or alcohol use"] if on("condition:liver-or-alcohol") else []
        reasons += [f"ALT {alt:.0f} U/L before the start"] if alt is not None and alt > UPPER_LIMIT["alt"] else []
        reasons += ["taking another hepatotoxic drug"] if on("on-hepatotoxic") else []
        reasons += [f"age {age:.0f}"] if age >= 60 else []
    elif reaction == drugs.QT:
        if not on("herg-missing"):
            reasons.append(f"predicted hERG block {float(x[_STATIC['herg']]):.2f} (admet-ai)")
        reasons += ["known QT-prolonging drug"] if on("known-qt") else []
        n_qt = int(x[_STATIC["on-qt-drugs"]])
        reasons += [f"taking {n_qt} other QT-prolonging drug(s)"] if n_qt else []
        reasons += [f"potassium {k:.1f} mmol/L"] if k is not None and k < 3.5 else []
        reasons += ["female"] if not on("male") else []
        reasons += [f"age {age:.0f}"] if age >= 65 else []
        reasons += ["heart disease"] if on("condition:heart-disease") else []
    return reasons


def describe_event(row: np.ndarray) -> str:
    """One sequence row back in words ("lab ck 8.0x reference, 120 days before")."""
    days = math.expm1(float(row[_SEQ["log-days-before"]]) * math.log1p(3650.0))
    when = f"{days:.0f} days before"
    for group in LAB_GROUPS:
        if row[_SEQ[f"lab:{group}"]] > 0.5:
            reference, scale = _LAB_SCALE[group]
            v = float(row[_SEQ["lab-value"]])
            value = reference * 2**v if scale is None else reference + v * scale
            return f"{group} {value:.3g}, {when}"
    for group in CONDITION_GROUPS:
        if row[_SEQ[f"condition:{group}"]] > 0.5:
            return f"condition {group}, {when}"
    for cls in CLASSES:
        if row[_SEQ[f"class:{cls}"]] > 0.5:
            return f"{cls} started, {when}"
    return f"event, {when}"


def explain(
    inputs: Mapping[str, np.ndarray],
    risks: Sequence[float],
    attention: Sequence[float] | None = None,
    min_risk: float = 0.0,
) -> list[str]:
    """Short reasons for one row's risks (REACTIONS order): the risk factors present for each reaction at or above
    `min_risk`, and the past events the model weighted most (its ATTENTION output)."""
    x = np.asarray(inputs["STATIC"]).reshape(-1)
    seq = np.asarray(inputs["SEQUENCE"]).reshape(SEQUENCE_LENGTH, -1)
    lines = []
    for reaction, risk in sorted(zip(REACTIONS, risks, strict=True), key=lambda p: -p[1]):
        if risk >= min_risk:
            reasons = risk_factors(x, reaction)
            lines.append(f"{reaction} {risk:.2f}" + (": " + "; ".join(reasons) if reasons else ""))
    if attention is not None:
        weights = np.asarray(attention, dtype=np.float64)
        present = seq[:, _SEQ["present"]] > 0.5
        top = [int(i) for i in np.argsort(-weights) if present[i]][:2]
        if top:
            lines.append("most weighted history: " + "; ".join(describe_event(seq[i]) for i in top))
    return lines


def batch(rows: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack one-row input dicts into one request."""
    rows = list(rows)
    return {name: np.concatenate([r[name] for r in rows]) for name in ("SEQUENCE", "STATIC")}
