"""Laboratory analytes: LOINC codes, UCUM units and conversions, decision limits as HPO phenotypes, the model panel.

One table serves the service (`normalise`, `classify`) and the differential-diagnosis model (`PANEL`, the order
of its `LABS` input). Limits are adult, sex-neutral decision limits from common laboratory practice (not any one
laboratory's range); a result exactly at a limit is normal. tests/cds/test_labs.py checks every HPO id against
the installed HPO release.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

Convert = Callable[[float], float]


def _scale(factor: float) -> Convert:
    return lambda v: v * factor


@dataclass(frozen=True, slots=True)
class Analyte:
    key: str  # "haemoglobin", "egfr": the model's feature name and `LabPhenotype.analyte`
    loinc: str  # canonical LOINC code
    display: str  # its LOINC long common name
    unit: str  # canonical UCUM unit: what values are normalised to and limits are in
    aliases: tuple[str, ...] = ()  # other LOINC codes for the same quantity (specimen, method, molar variants)
    conversions: Mapping[str, Convert] = field(default_factory=dict)  # other unit -> value in `unit`
    log: bool = False  # right-skewed: the model standardises log(value)
    in_panel: bool = False  # an input of the differential-diagnosis model
    low: float | None = None
    high: float | None = None
    low_hpo: str | None = None
    high_hpo: str | None = None


@dataclass(frozen=True, slots=True)
class NormalisedLab:
    key: str  # analyte key, e.g. "haemoglobin"
    loinc: str  # canonical LOINC code of the analyte
    value: float  # in `unit`
    unit: str  # the analyte's canonical UCUM unit


@dataclass(frozen=True, slots=True)
class LabObservation:
    loinc: str
    value: float
    unit: str  # UCUM
    id: str = ""  # e.g. the FHIR Observation.id, carried into the result


@dataclass(frozen=True, slots=True)
class LabPhenotype:
    hpo_id: str
    analyte: str  # analyte key
    direction: str  # "low" or "high"
    value: float  # in the analyte's unit
    unit: str
    low: float | None
    high: float | None
    observation_id: str = ""


@dataclass(frozen=True, slots=True)
class Unmapped:
    observation: LabObservation
    reason: str  # "unknown-loinc" or "unknown-unit"


@dataclass(frozen=True, slots=True)
class LabResult:
    phenotypes: list[LabPhenotype] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)


MG_DL_GLUCOSE_PER_MMOL_L = 18.016  # glucose 180.16 g/mol
UMOL_L_CREATININE_PER_MG_DL = 88.42  # creatinine 113.12 g/mol
MG_DL_UREA_NITROGEN_PER_MMOL_L = 2.8014  # urea (or its nitrogen) mmol/L -> urea nitrogen mg/dL: 2 N of 14.007 g/mol
UMOL_L_URATE_PER_MG_DL = 59.48  # uric acid 168.11 g/mol
MG_DL_CALCIUM_PER_MMOL_L = 4.008
MG_DL_CHOLESTEROL_PER_MMOL_L = 38.67  # total, HDL and LDL cholesterol
MG_DL_TG_PER_MMOL_L = 88.57
UMOL_L_BILIRUBIN_PER_MG_DL = 17.1
G_DL_HEMOGLOBIN_PER_MMOL_L = 1.611  # haemoglobin monomer (Fe), as Dutch and Scandinavian laboratories report it
PG_ML_NT_PROBNP_PER_PMOL_L = 8.457  # NT-proBNP 8457 Da
MG_G_PER_MG_MMOL_CREATININE = UMOL_L_CREATININE_PER_MG_DL / 10  # albumin/creatinine ratio: mg/mmol -> mg/g

IDENTITY = _scale(1.0)
COUNT_PER_UL = {"10*9/L": IDENTITY, "/nL": IDENTITY, "/uL": _scale(1e-3), "/mm3": _scale(1e-3), "K/uL": IDENTITY}
ENZYME = {"[IU]/L": IDENTITY, "ukat/L": _scale(60.0), "IU/L": IDENTITY}  # 1 ukat = 60 umol/min = 60 U
MONOVALENT = {"meq/L": IDENTITY, "mEq/L": IDENTITY}
CHOLESTEROL = {"mmol/L": _scale(MG_DL_CHOLESTEROL_PER_MMOL_L)}
EGFR = {"mL/min/1.73m2": IDENTITY, "mL/min/{1.73m2}": IDENTITY, "mL/min": IDENTITY}
TSH = {"u[IU]/mL": IDENTITY, "mU/L": IDENTITY, "uU/mL": IDENTITY, "mIU/L": IDENTITY, "uIU/mL": IDENTITY}

# The first 20 rows, in this order, are the model's `LABS` input: the trained model depends on it.
ANALYTES: tuple[Analyte, ...] = (
    Analyte(
        "haemoglobin",
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        aliases=("30313-1", "20509-6"),
        conversions={"g/L": _scale(0.1), "mmol/L": _scale(G_DL_HEMOGLOBIN_PER_MMOL_L)},
        in_panel=True,
        low=12.0,
        high=17.5,
        low_hpo="HP:0001903",
        high_hpo="HP:0001900",
    ),
    Analyte(
        "mcv", "787-2", "MCV [Entitic volume] by Automated count", "fL", conversions={"um3": IDENTITY}, in_panel=True
    ),
    Analyte(
        "wbc",
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        aliases=("26464-8", "804-5"),
        conversions=COUNT_PER_UL,
        in_panel=True,
        low=4.0,
        high=11.0,
        low_hpo="HP:0001882",
        high_hpo="HP:0001974",
    ),
    Analyte(
        "platelets",
        "777-3",
        "Platelets [#/volume] in Blood by Automated count",
        "10*3/uL",
        aliases=("26515-7", "778-1"),
        conversions=COUNT_PER_UL,
        in_panel=True,
        low=150.0,
        high=450.0,
        low_hpo="HP:0001873",
        high_hpo="HP:0001894",
    ),
    Analyte(
        "sodium",
        "2951-2",
        "Sodium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        aliases=("2947-0", "39791-9"),
        conversions=MONOVALENT,
        in_panel=True,
        low=135.0,
        high=145.0,
        low_hpo="HP:0002902",
        high_hpo="HP:0003228",
    ),
    Analyte(
        "potassium",
        "2823-3",
        "Potassium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        aliases=("6298-4", "39789-3"),
        conversions=MONOVALENT,
        in_panel=True,
        low=3.5,
        high=5.0,
        low_hpo="HP:0002900",
        high_hpo="HP:0002153",
    ),
    Analyte(
        "creatinine",
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        aliases=("38483-4", "14682-9"),
        conversions={"umol/L": _scale(1 / UMOL_L_CREATININE_PER_MG_DL)},
        log=True,
        in_panel=True,
        high=1.3,
        high_hpo="HP:0003259",
    ),
    # Results of the older equations (MDRD, CKD-EPI 2009, with and without race) count as eGFR too.
    Analyte(
        "egfr",
        "98979-8",
        "Glomerular filtration rate/1.73 sq M (CKD-EPI 2021)",
        "mL/min/{1.73_m2}",
        aliases=("33914-3", "48642-3", "48643-1", "62238-1", "88293-6", "88294-4"),
        conversions=EGFR,
        in_panel=True,
        low=60.0,
        low_hpo="HP:0012213",
    ),
    # 140 mg/dL (7.8 mmol/L): the ADA's definition of hospital hyperglycemia; < 70 mg/dL: level 1 hypoglycemia
    Analyte(
        "glucose",
        "2345-7",
        "Glucose [Mass/volume] in Serum or Plasma",
        "mg/dL",
        aliases=("2339-0", "14749-6", "15074-8", "41653-7"),
        conversions={"mmol/L": _scale(MG_DL_GLUCOSE_PER_MMOL_L)},
        log=True,
        in_panel=True,
        low=70.0,
        high=140.0,
        low_hpo="HP:0001943",
        high_hpo="HP:0003074",
    ),
    # IFCC mmol/mol -> NGSP %: the IFCC-NGSP master equation; >= 6.5 % is the diabetes threshold
    Analyte(
        "hba1c",
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        aliases=("17856-6", "59261-8"),
        conversions={"mmol/mol": lambda v: v * 0.09148 + 2.152},
        in_panel=True,
        high=6.4,
        high_hpo="HP:0040217",
    ),
    Analyte(
        "alt",
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        aliases=("1743-4", "1744-2"),
        conversions=ENZYME,
        log=True,
        in_panel=True,
        high=40.0,
        high_hpo="HP:0031964",
    ),
    Analyte(
        "ldl",
        "13457-7",
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
        "mg/dL",
        aliases=("2089-1", "18262-6"),
        conversions=CHOLESTEROL,
        in_panel=True,
        high=160.0,
        high_hpo="HP:0003141",
    ),
    Analyte(
        "uacr",
        "9318-7",
        "Albumin/Creatinine [Mass Ratio] in Urine",
        "mg/g",
        conversions={"mg/mmol": _scale(MG_G_PER_MG_MMOL_CREATININE), "ug/mg": IDENTITY},
        log=True,
        in_panel=True,
    ),
    Analyte(
        "crp",
        "1988-5",
        "C reactive protein [Mass/volume] in Serum or Plasma",
        "mg/L",
        aliases=("30522-7",),
        conversions={"mg/dL": _scale(10.0)},
        log=True,
        in_panel=True,
        high=10.0,
        high_hpo="HP:0011227",
    ),
    Analyte(
        "tsh",
        "3016-3",
        "Thyrotropin [Units/volume] in Serum or Plasma",
        "m[IU]/L",
        aliases=("11580-8",),
        conversions=TSH,
        log=True,
        in_panel=True,
        low=0.4,
        high=4.5,
        low_hpo="HP:0031098",
        high_hpo="HP:0002925",
    ),
    Analyte(
        "ferritin",
        "2276-4",
        "Ferritin [Mass/volume] in Serum or Plasma",
        "ng/mL",
        aliases=("24373-3",),
        conversions={"ug/L": IDENTITY},
        log=True,
        in_panel=True,
        high=300.0,
        high_hpo="HP:0003281",
    ),
    Analyte(
        "transferrin_saturation", "2502-3", "Iron saturation [Mass Fraction] in Serum or Plasma", "%", in_panel=True
    ),
    Analyte(
        "ceruloplasmin",
        "2064-4",
        "Ceruloplasmin [Mass/volume] in Serum or Plasma",
        "mg/dL",
        conversions={"mg/L": _scale(0.1), "g/L": _scale(100.0)},
        in_panel=True,
    ),
    Analyte(
        "nt_probnp",
        "33762-6",
        "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
        "pg/mL",
        conversions={"ng/L": IDENTITY, "pmol/L": _scale(PG_ML_NT_PROBNP_PER_PMOL_L)},
        log=True,
        in_panel=True,
    ),
    Analyte(
        "urate",
        "3084-1",
        "Urate [Mass/volume] in Serum or Plasma",
        "mg/dL",
        conversions={"umol/L": _scale(1 / UMOL_L_URATE_PER_MG_DL), "mmol/L": _scale(1000 / UMOL_L_URATE_PER_MG_DL)},
        in_panel=True,
    ),
    # Not model inputs: decision limits only, or results carebundle's panels carry.
    Analyte(
        "ast",
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        aliases=("30239-8",),
        conversions=ENZYME,
        high=40.0,
        high_hpo="HP:0031956",
    ),
    Analyte(
        "alp",
        "6768-6",
        "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        conversions=ENZYME,
    ),
    Analyte(
        "bilirubin",
        "1975-2",
        "Bilirubin.total [Mass/volume] in Serum or Plasma",
        "mg/dL",
        aliases=("14631-6",),
        conversions={"umol/L": _scale(1 / UMOL_L_BILIRUBIN_PER_MG_DL)},
        high=1.2,
        high_hpo="HP:0002904",
    ),
    Analyte("albumin", "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", conversions={"g/L": _scale(0.1)}),
    Analyte(
        "calcium",
        "17861-6",
        "Calcium [Mass/volume] in Serum or Plasma",
        "mg/dL",
        aliases=("2000-8",),
        conversions={"mmol/L": _scale(MG_DL_CALCIUM_PER_MMOL_L)},
        low=8.5,
        high=10.5,
        low_hpo="HP:0002901",
        high_hpo="HP:0003072",
    ),
    Analyte("chloride", "2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", conversions=MONOVALENT),
    Analyte(
        "total_co2",
        "2028-9",
        "Carbon dioxide, total [Moles/volume] in Serum or Plasma",
        "mmol/L",
        conversions=MONOVALENT,
    ),
    Analyte(
        "urea_nitrogen",
        "3094-0",
        "Urea nitrogen [Mass/volume] in Serum or Plasma",
        "mg/dL",
        conversions={"mmol/L": _scale(MG_DL_UREA_NITROGEN_PER_MMOL_L)},
    ),
    Analyte(
        "total_cholesterol", "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", conversions=CHOLESTEROL
    ),
    Analyte("hdl", "2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", conversions=CHOLESTEROL),
    Analyte(
        "triglycerides",
        "2571-8",
        "Triglyceride [Mass/volume] in Serum or Plasma",
        "mg/dL",
        aliases=("14927-8",),
        conversions={"mmol/L": _scale(MG_DL_TG_PER_MMOL_L)},
        high=150.0,
        high_hpo="HP:0002155",
    ),
    Analyte(
        "haematocrit",
        "4544-3",
        "Hematocrit [Volume Fraction] of Blood by Automated count",
        "%",
        conversions={"L/L": _scale(100.0)},
    ),
    Analyte(
        "rbc",
        "789-8",
        "Erythrocytes [#/volume] in Blood by Automated count",
        "10*6/uL",
        conversions={"10*12/L": IDENTITY, "/pL": IDENTITY, "M/uL": IDENTITY},
    ),
    Analyte(
        "urine_albumin", "14957-5", "Microalbumin [Mass/volume] in Urine", "mg/dL", conversions={"mg/L": _scale(0.1)}
    ),
)

BY_LOINC: dict[str, Analyte] = {code: a for a in ANALYTES for code in (a.loinc, *a.aliases)}
PANEL: tuple[Analyte, ...] = tuple(a for a in ANALYTES if a.in_panel)  # the model's `LABS` input, in order
LAB_KEYS: tuple[str, ...] = tuple(a.key for a in PANEL)
LAB_INDEX: dict[str, int] = {key: i for i, key in enumerate(LAB_KEYS)}


def normalise(loinc: str, value: float, unit: str) -> NormalisedLab | Unmapped:
    """A result as its analyte in the canonical LOINC code and UCUM unit, or why it cannot be."""
    analyte = BY_LOINC.get(loinc.strip())
    if analyte is None:
        return Unmapped(LabObservation(loinc, value, unit), "unknown-loinc")
    ucum = unit.strip()
    if ucum == analyte.unit:
        return NormalisedLab(analyte.key, analyte.loinc, value, analyte.unit)
    convert = analyte.conversions.get(ucum)
    if convert is None:
        return Unmapped(LabObservation(loinc, value, unit), "unknown-unit")
    return NormalisedLab(analyte.key, analyte.loinc, convert(value), analyte.unit)


def classify(observation: LabObservation) -> LabPhenotype | Unmapped | None:
    """The phenotype an observation shows, None when within limits, or why it cannot be judged."""
    lab = normalise(observation.loinc, observation.value, observation.unit)
    if isinstance(lab, Unmapped):
        return Unmapped(observation, lab.reason)
    analyte = BY_LOINC[lab.loinc]
    direction, hpo_id = None, None
    if analyte.low is not None and lab.value < analyte.low:
        direction, hpo_id = "low", analyte.low_hpo
    elif analyte.high is not None and lab.value > analyte.high:
        direction, hpo_id = "high", analyte.high_hpo
    if direction is None or hpo_id is None:
        return None
    return LabPhenotype(hpo_id, lab.key, direction, lab.value, lab.unit, analyte.low, analyte.high, observation.id)


def lab_phenotypes(observations: Iterable[LabObservation]) -> LabResult:
    """Phenotypes of the abnormal results, and the observations that could not be judged (with the reason)."""
    result = LabResult()
    for observation in observations:
        outcome = classify(observation)
        if isinstance(outcome, LabPhenotype):
            result.phenotypes.append(outcome)
        elif isinstance(outcome, Unmapped):
            result.unmapped.append(outcome)
    return result


def ckd_epi_2021(creatinine_mg_dl: float, age: float, female: bool) -> float:
    """eGFR (mL/min/1.73 m2) by the race-free CKD-EPI 2021 creatinine equation."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / kappa
    egfr = 142 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age
    return egfr * 1.012 if female else egfr


def panel(values: Mapping[str, float]) -> list[float]:
    """A `PANEL` row in model order from {key: value}; missing labs are NaN."""
    return [float(values.get(key, math.nan)) for key in LAB_KEYS]


def observations_to_values(resources: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Panel lab values by key, in canonical units, from FHIR R4 Observations (LOINC-coded valueQuantity).

    Other resources, other analytes and results that do not normalise are skipped.
    """
    values: dict[str, float] = {}
    for resource in resources:
        quantity = resource.get("valueQuantity")
        if resource.get("resourceType") != "Observation" or quantity is None:
            continue
        unit = quantity.get("code") if quantity.get("system") == UCUM else None
        for coding in resource.get("code", {}).get("coding", []):
            if coding.get("system") != LOINC:
                continue
            lab = normalise(coding.get("code", ""), float(quantity["value"]), unit or quantity.get("unit", ""))
            if isinstance(lab, NormalisedLab) and lab.key in LAB_INDEX:
                values[lab.key] = lab.value
    return values
