"""The lab panel the model reads: LOINC codes, UCUM units and the order of the `LABS` input."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Lab:
    key: str
    loinc: str
    display: str
    unit: str  # UCUM
    log: bool  # right-skewed: standardised on log(value) inside the model


LABS: tuple[Lab, ...] = (
    Lab("haemoglobin", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", False),
    Lab("mcv", "787-2", "MCV [Entitic volume] by Automated count", "fL", False),
    Lab("wbc", "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", False),
    Lab("platelets", "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", False),
    Lab("sodium", "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", False),
    Lab("potassium", "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", False),
    Lab("creatinine", "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", True),
    Lab("egfr", "98979-8", "Glomerular filtration rate/1.73 sq M (CKD-EPI 2021)", "mL/min/{1.73_m2}", False),
    Lab("glucose", "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", True),
    Lab("hba1c", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", False),
    Lab("alt", "1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", True),
    Lab("ldl", "13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "mg/dL", False),
    Lab("uacr", "9318-7", "Albumin/Creatinine [Mass Ratio] in Urine", "mg/g", True),
    Lab("crp", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", True),
    Lab("tsh", "3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", True),
    Lab("ferritin", "2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", True),
    Lab("transferrin_saturation", "2502-3", "Iron saturation [Mass Fraction] in Serum or Plasma", "%", False),
    Lab("ceruloplasmin", "2064-4", "Ceruloplasmin [Mass/volume] in Serum or Plasma", "mg/dL", False),
    Lab(
        "nt_probnp",
        "33762-6",
        "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
        "pg/mL",
        True,
    ),
    Lab("urate", "3084-1", "Urate [Mass/volume] in Serum or Plasma", "mg/dL", False),
)
LAB_KEYS: tuple[str, ...] = tuple(lab.key for lab in LABS)
LAB_INDEX: dict[str, int] = {key: i for i, key in enumerate(LAB_KEYS)}
LOINC_TO_KEY: dict[str, str] = {lab.loinc: lab.key for lab in LABS}


def ckd_epi_2021(creatinine_mg_dl: float, age: float, female: bool) -> float:
    """eGFR (mL/min/1.73 m2) by the race-free CKD-EPI 2021 creatinine equation."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / kappa
    egfr = 142 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age
    return egfr * 1.012 if female else egfr


def panel(values: dict[str, float]) -> list[float]:
    """A `LABS` row in model order from {key: value}; missing labs are NaN."""
    return [float(values.get(key, math.nan)) for key in LAB_KEYS]


def observations_to_values(resources: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Lab values by key from FHIR R4 Observation resources (LOINC-coded, valueQuantity); other resources skipped."""
    values: dict[str, float] = {}
    for resource in resources:
        if resource.get("resourceType") != "Observation" or "valueQuantity" not in resource:
            continue
        for coding in resource.get("code", {}).get("coding", []):
            key = LOINC_TO_KEY.get(coding.get("code", ""))
            if key is not None and coding.get("system") == "http://loinc.org":
                values[key] = float(resource["valueQuantity"]["value"])
    return values
