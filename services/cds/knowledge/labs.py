"""Abnormal laboratory results (LOINC code, value, UCUM unit) as HPO phenotypes (pure).

Reference limits are adult, sex-neutral decision limits from common laboratory practice (not any one
laboratory's range); a result exactly at a limit is normal. Every HPO id here is checked against the
installed HPO release by tests/cds/test_knowledge_labs.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


def _scale(factor: float) -> Callable[[float], float]:
    return lambda v: v * factor


IDENTITY = _scale(1.0)


@dataclass(frozen=True, slots=True)
class LabRule:
    analyte: str
    loinc: tuple[str, ...]
    unit: str  # the UCUM unit the limits are in
    conversions: Mapping[str, Callable[[float], float]]  # UCUM unit -> function to `unit`
    low: float | None = None
    high: float | None = None
    low_hpo: str | None = None
    high_hpo: str | None = None


@dataclass(frozen=True, slots=True)
class LabObservation:
    loinc: str
    value: float
    unit: str  # UCUM
    id: str = ""  # e.g. the FHIR Observation.id, carried into the result


@dataclass(frozen=True, slots=True)
class LabPhenotype:
    hpo_id: str
    analyte: str
    direction: str  # "low" or "high"
    value: float  # in the rule's unit
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
MG_DL_CREATININE_PER_UMOL_L = 1 / 88.42  # creatinine 113.12 g/mol
MG_DL_CALCIUM_PER_MMOL_L = 4.008
MG_DL_LDL_PER_MMOL_L = 38.67
MG_DL_TG_PER_MMOL_L = 88.57
MG_DL_BILIRUBIN_PER_UMOL_L = 1 / 17.1
G_DL_HEMOGLOBIN_PER_MMOL_L = 1.611  # hemoglobin monomer (Fe), as Dutch and Scandinavian laboratories report it

COUNT_PER_UL = {"10*3/uL": IDENTITY, "10*9/L": IDENTITY, "K/uL": IDENTITY, "/uL": _scale(1e-3), "/nL": IDENTITY}
ENZYME = {"U/L": IDENTITY, "[IU]/L": IDENTITY, "ukat/L": _scale(60.0)}
MOLAR = {"mmol/L": IDENTITY, "meq/L": IDENTITY, "mEq/L": IDENTITY}

RULES: tuple[LabRule, ...] = (
    LabRule("hemoglobin", ("718-7", "30313-1", "20509-6"), "g/dL",
            {"g/dL": IDENTITY, "g/L": _scale(0.1), "mmol/L": _scale(G_DL_HEMOGLOBIN_PER_MMOL_L)},
            low=12.0, high=17.5, low_hpo="HP:0001903", high_hpo="HP:0001900"),
    LabRule("glucose", ("2345-7", "2339-0", "14749-6", "15074-8", "41653-7"), "mg/dL",
            {"mg/dL": IDENTITY, "mmol/L": _scale(MG_DL_GLUCOSE_PER_MMOL_L)},
            # 140 mg/dL (7.8 mmol/L): the ADA's definition of hospital hyperglycemia; < 70 mg/dL: level 1 hypoglycemia
            low=70.0, high=140.0, low_hpo="HP:0001943", high_hpo="HP:0003074"),
    LabRule("hemoglobin A1c", ("4548-4", "17856-6", "59261-8"), "%",
            # IFCC mmol/mol -> NGSP %: the IFCC-NGSP master equation
            {"%": IDENTITY, "mmol/mol": lambda v: v * 0.09148 + 2.152},
            high=6.4, high_hpo="HP:0040217"),  # >= 6.5 % is the diabetes threshold
    LabRule("creatinine", ("2160-0", "38483-4", "14682-9"), "mg/dL",
            {"mg/dL": IDENTITY, "umol/L": _scale(MG_DL_CREATININE_PER_UMOL_L)},
            high=1.3, high_hpo="HP:0003259"),
    LabRule("eGFR", ("33914-3", "48642-3", "48643-1", "62238-1", "98979-8", "88293-6", "88294-4"), "mL/min/{1.73_m2}",
            {"mL/min/{1.73_m2}": IDENTITY, "mL/min/1.73m2": IDENTITY, "mL/min": IDENTITY},
            low=60.0, low_hpo="HP:0012213"),
    LabRule("potassium", ("2823-3", "6298-4", "39789-3"), "mmol/L", MOLAR,
            low=3.5, high=5.0, low_hpo="HP:0002900", high_hpo="HP:0002153"),
    LabRule("sodium", ("2951-2", "2947-0", "39791-9"), "mmol/L", MOLAR,
            low=135.0, high=145.0, low_hpo="HP:0002902", high_hpo="HP:0003228"),
    LabRule("leukocytes", ("6690-2", "26464-8", "804-5"), "10*3/uL", COUNT_PER_UL,
            low=4.0, high=11.0, low_hpo="HP:0001882", high_hpo="HP:0001974"),
    LabRule("platelets", ("777-3", "26515-7", "778-1"), "10*3/uL", COUNT_PER_UL,
            low=150.0, high=450.0, low_hpo="HP:0001873", high_hpo="HP:0001894"),
    LabRule("C-reactive protein", ("1988-5", "30522-7"), "mg/L", {"mg/L": IDENTITY, "mg/dL": _scale(10.0)},
            high=10.0, high_hpo="HP:0011227"),
    LabRule("alanine aminotransferase", ("1742-6", "1743-4", "1744-2"), "U/L", ENZYME,
            high=40.0, high_hpo="HP:0031964"),
    LabRule("aspartate aminotransferase", ("1920-8", "30239-8"), "U/L", ENZYME,
            high=40.0, high_hpo="HP:0031956"),
    LabRule("thyrotropin", ("3016-3", "11580-8"), "m[IU]/L",
            {"m[IU]/L": IDENTITY, "u[IU]/mL": IDENTITY, "mU/L": IDENTITY, "uU/mL": IDENTITY},
            low=0.4, high=4.5, low_hpo="HP:0031098", high_hpo="HP:0002925"),
    LabRule("calcium", ("17861-6", "2000-8"), "mg/dL", {"mg/dL": IDENTITY, "mmol/L": _scale(MG_DL_CALCIUM_PER_MMOL_L)},
            low=8.5, high=10.5, low_hpo="HP:0002901", high_hpo="HP:0003072"),
    LabRule("bilirubin", ("1975-2", "14631-6"), "mg/dL",
            {"mg/dL": IDENTITY, "umol/L": _scale(MG_DL_BILIRUBIN_PER_UMOL_L)},
            high=1.2, high_hpo="HP:0002904"),
    LabRule("LDL cholesterol", ("2089-1", "13457-7", "18262-6"), "mg/dL",
            {"mg/dL": IDENTITY, "mmol/L": _scale(MG_DL_LDL_PER_MMOL_L)},
            high=160.0, high_hpo="HP:0003141"),
    LabRule("triglycerides", ("2571-8", "14927-8"), "mg/dL", {"mg/dL": IDENTITY, "mmol/L": _scale(MG_DL_TG_PER_MMOL_L)},
            high=150.0, high_hpo="HP:0002155"),
    LabRule("ferritin", ("2276-4", "24373-3"), "ng/mL", {"ng/mL": IDENTITY, "ug/L": IDENTITY},
            high=300.0, high_hpo="HP:0003281"),
)  # fmt: skip

BY_LOINC: dict[str, LabRule] = {code: rule for rule in RULES for code in rule.loinc}


def classify(observation: LabObservation, rules: Mapping[str, LabRule] = BY_LOINC) -> LabPhenotype | Unmapped | None:
    """The phenotype an observation shows, None when within limits, or why it cannot be judged."""
    rule = rules.get(observation.loinc)
    if rule is None:
        return Unmapped(observation, "unknown-loinc")
    convert = rule.conversions.get(observation.unit.strip())
    if convert is None:
        return Unmapped(observation, "unknown-unit")
    value = convert(observation.value)
    direction, hpo_id = None, None
    if rule.low is not None and value < rule.low:
        direction, hpo_id = "low", rule.low_hpo
    elif rule.high is not None and value > rule.high:
        direction, hpo_id = "high", rule.high_hpo
    if direction is None or hpo_id is None:
        return None
    return LabPhenotype(hpo_id, rule.analyte, direction, value, rule.unit, rule.low, rule.high, observation.id)


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
