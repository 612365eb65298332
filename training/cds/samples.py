"""Synthetic decision-support cases: carebundle's FHIR transaction Bundles with a clinical note added.

carebundle (offline, valid R4) gives each profile's patient, encounter, conditions, medications, labs and vitals;
it writes no notes, so each case gets a DocumentReference whose text is rendered the way the training cohort's
notes are (training/cds/cohort.py) for the profile's diagnosis. All of it is synthetic.
"""

from __future__ import annotations

import base64
import json
import uuid
from functools import cache
from typing import Any

import numpy as np

from training.cds.cohort import REFERENCE_DATE, presentation, render_note
from training.cds.diseases import DISEASES
from training.cds.hpo import load_profiles

PROFILES = ("healthy", "type2_diabetes", "hypertension", "ckd_stage3", "anaemia")
# The training cohort's diagnosis each carebundle profile stands for (None: a routine check-up note).
PROFILE_DIAGNOSIS: dict[str, str | None] = {
    "healthy": None,
    "type2_diabetes": "type2_diabetes",
    "hypertension": "hypertension",
    "ckd_stage3": "ckd_stage3",
    "anaemia": "iron_deficiency_anaemia",
}
CHECK_UP = "{age}-year-old {sex} attending for a routine health check. No new complaints. Denies chest pain."


@cache
def _presentations() -> dict[str, list[tuple[tuple[str, ...], float]]]:
    profiles = load_profiles([d.omim for d in DISEASES if d.omim is not None])
    return {d.key: presentation(d, profiles) for d in DISEASES}


def note_for(profile: str, seed: int, age: int, female: bool) -> str:
    diagnosis = PROFILE_DIAGNOSIS[profile]
    if diagnosis is None:
        return CHECK_UP.format(age=age, sex="woman" if female else "man")
    disease = next(d for d in DISEASES if d.key == diagnosis)
    return render_note(np.random.default_rng(seed), disease, _presentations(), age, female)


def case_bundle(profile: str, seed: int, index: int = 0, female: bool = True) -> dict[str, Any]:
    """A transaction Bundle: carebundle's resources for one patient plus a note (DocumentReference)."""
    from carebundle import generate_bundle, to_json

    bundle: dict[str, Any] = json.loads(
        to_json(generate_bundle(profile=profile, seed=seed, index=index, sex="F" if female else "M"))
    )
    patient_entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    birth = patient_entry["resource"].get("birthDate", "1970-01-01")
    age = REFERENCE_DATE.year - int(birth[:4])
    text = note_for(profile, seed * 1000 + index, age, female)
    note_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"medstream-note:{profile}:{seed}:{index}")
    bundle["entry"].append(
        {
            "fullUrl": f"urn:uuid:{note_uuid}",
            "resource": {
                "resourceType": "DocumentReference",
                "status": "current",
                "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
                "subject": {"reference": patient_entry["fullUrl"]},
                "date": f"{REFERENCE_DATE.isoformat()}T09:20:00Z",
                "content": [
                    {"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}
                ],
            },
            "request": {"method": "POST", "url": "DocumentReference"},
        }
    )
    return bundle


def patient_id(bundle: dict[str, Any]) -> str:
    """The id the FHIR gateway gives the bundle's patient (the UUID of its urn:uuid fullUrl)."""
    entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    return str(entry["resource"].get("id") or entry["fullUrl"].removeprefix("urn:uuid:").lower())
