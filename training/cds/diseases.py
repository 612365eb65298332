"""The diagnoses of the synthetic cohort and their invented, plausible lab and symptom distributions.

Common diseases carry hand-written presentations; rare genetic ones take theirs from HPO annotations (`hpo.py`).
Every number here is made up to be clinically plausible, not fitted to data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.cds.contract import CLASS_BY_KEY


@dataclass(frozen=True)
class Normal:
    mean: float
    sd: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.normal(self.mean, self.sd))


@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float  # on the natural-log scale

    def sample(self, rng: np.random.Generator) -> float:
        return float(self.median * np.exp(rng.normal(0.0, self.sigma)))


Distribution = Normal | LogNormal


@dataclass(frozen=True)
class Disease:
    """A model class (services/cds/contract.py: name, disease id, rarity) with its synthetic presentation."""

    key: str
    weight: float  # share of the cohort
    carebundle_profile: str = "healthy"  # background demographics and core labs
    phenotypes: tuple[tuple[str, float], ...] = ()  # (mention, frequency); "a|b" are synonyms
    labs: dict[str, Distribution] = field(default_factory=dict)  # overrides of the background value
    orders: dict[str, float] = field(default_factory=dict)  # probability that the lab was ordered
    age: tuple[int, int] = (45, 65)

    @property
    def name(self) -> str:
        return CLASS_BY_KEY[self.key].name

    @property
    def rare(self) -> bool:
        return CLASS_BY_KEY[self.key].rare

    @property
    def omim(self) -> int | None:
        """Rare diseases: their presentation comes from the HPO annotations of this OMIM entry."""
        disease_id = CLASS_BY_KEY[self.key].disease_id
        return int(disease_id.removeprefix("OMIM:")) if disease_id else None


# Background for labs that carebundle's panels do not cover, and for everyone's ordering habits.
BASELINE_LABS: dict[str, Distribution] = {
    "mcv": Normal(90, 4),
    "crp": LogNormal(1.5, 0.8),
    "tsh": LogNormal(1.8, 0.45),
    "ferritin": LogNormal(100, 0.6),
    "transferrin_saturation": Normal(30, 8),
    "ceruloplasmin": Normal(30, 5),
    "nt_probnp": LogNormal(60, 0.8),
    "urate": Normal(5.5, 1.2),
}
BASELINE_ORDERS: dict[str, float] = {
    "haemoglobin": 0.9,
    "mcv": 0.9,
    "wbc": 0.9,
    "platelets": 0.9,
    "sodium": 0.9,
    "potassium": 0.9,
    "creatinine": 0.9,
    "egfr": 0.9,
    "glucose": 0.85,
    "alt": 0.8,
    "hba1c": 0.35,
    "ldl": 0.35,
    "uacr": 0.15,
    "crp": 0.45,
    "tsh": 0.3,
    "ferritin": 0.2,
    "transferrin_saturation": 0.15,
    "ceruloplasmin": 0.03,
    "nt_probnp": 0.12,
    "urate": 0.12,
}
# Mentions any note may carry whatever the diagnosis: what patients also complain of.
NOISE_PHENOTYPES: tuple[str, ...] = (
    "low back pain",
    "insomnia",
    "headache",
    "tiredness",
    "knee pain",
    "heartburn",
    "anxiety",
    "constipation",
    "seasonal allergies",
    "mild nausea",
    "neck stiffness",
    "occasional cough",
    "poor sleep",
    "reduced appetite",
)

DISEASES: tuple[Disease, ...] = (
    Disease(
        "type2_diabetes",
        0.10,
        carebundle_profile="type2_diabetes",
        phenotypes=(
            ("polyuria|passing a lot of urine", 0.4),
            ("polydipsia|excessive thirst", 0.4),
            ("fatigue", 0.4),
            ("blurred vision", 0.2),
            ("weight gain", 0.3),
            ("recurrent skin infections", 0.1),
            ("numbness in both feet|peripheral neuropathy", 0.2),
            ("slow-healing wound on the foot", 0.1),
        ),
        orders={"hba1c": 0.95, "ldl": 0.7, "uacr": 0.6},
    ),
    Disease(
        "hypertension",
        0.10,
        carebundle_profile="hypertension",
        phenotypes=(
            ("elevated blood pressure readings|raised home blood pressure", 0.85),
            ("headache", 0.3),
            ("palpitations", 0.1),
            ("nosebleeds|epistaxis", 0.05),
            ("dizziness", 0.15),
        ),
        orders={"ldl": 0.7, "uacr": 0.4},
    ),
    Disease(
        "ckd_stage3",
        0.07,
        carebundle_profile="ckd_stage3",
        phenotypes=(
            ("fatigue", 0.4),
            ("ankle swelling|peripheral oedema", 0.3),
            ("nocturia", 0.3),
            ("generalised itch|pruritus", 0.2),
            ("poor appetite", 0.2),
            ("elevated blood pressure", 0.5),
            ("foamy urine", 0.15),
        ),
        labs={"urate": Normal(7.0, 1.3), "nt_probnp": LogNormal(250, 0.8), "ferritin": LogNormal(180, 0.6)},
        orders={"uacr": 0.8, "urate": 0.4, "ferritin": 0.4},
    ),
    Disease(
        "iron_deficiency_anaemia",
        0.07,
        carebundle_profile="anaemia",
        phenotypes=(
            ("fatigue|tiredness all the time", 0.7),
            ("pallor", 0.5),
            ("breathless on exertion", 0.4),
            ("heavy menstrual bleeding|menorrhagia", 0.3),
            ("craving ice|pica", 0.1),
            ("brittle nails", 0.2),
            ("palpitations", 0.2),
            ("light-headedness", 0.2),
        ),
        labs={"mcv": Normal(74, 5), "ferritin": LogNormal(8, 0.5), "transferrin_saturation": Normal(9, 4)},
        orders={"ferritin": 0.9, "transferrin_saturation": 0.8},
    ),
    Disease(
        "community_acquired_pneumonia",
        0.06,
        phenotypes=(
            ("fever", 0.8),
            ("productive cough|cough with green sputum", 0.8),
            ("pleuritic chest pain", 0.4),
            ("shortness of breath|dyspnoea", 0.6),
            ("crackles at the right base", 0.5),
            ("rigors", 0.3),
            ("tachypnoea", 0.4),
        ),
        labs={"wbc": Normal(14, 4), "crp": LogNormal(90, 0.6), "platelets": Normal(290, 80)},
        orders={"crp": 0.95},
    ),
    Disease(
        "heart_failure",
        0.06,
        phenotypes=(
            ("breathless on exertion|exertional dyspnoea", 0.8),
            ("orthopnoea", 0.5),
            ("paroxysmal nocturnal dyspnoea", 0.3),
            ("bilateral ankle swelling|pitting oedema", 0.7),
            ("fatigue", 0.5),
            ("raised jugular venous pressure", 0.4),
            ("weight gain", 0.3),
            ("bibasal crackles", 0.4),
        ),
        labs={
            "nt_probnp": LogNormal(2500, 0.7),
            "sodium": Normal(134, 3),
            "haemoglobin": Normal(12.8, 1.5),
            "creatinine": LogNormal(1.25, 0.25),
            "crp": LogNormal(6, 0.8),
        },
        orders={"nt_probnp": 0.95},
        age=(55, 85),
    ),
    Disease(
        "hypothyroidism",
        0.06,
        phenotypes=(
            ("fatigue", 0.7),
            ("cold intolerance|always feeling cold", 0.5),
            ("weight gain", 0.5),
            ("constipation", 0.4),
            ("dry skin", 0.4),
            ("hair thinning", 0.3),
            ("bradycardia", 0.2),
            ("low mood", 0.3),
            ("hoarse voice", 0.1),
        ),
        labs={"tsh": LogNormal(9, 0.5), "sodium": Normal(137, 3), "ldl": Normal(150, 30)},
        orders={"tsh": 0.95},
    ),
    Disease(
        "hyperthyroidism",
        0.04,
        phenotypes=(
            ("weight loss", 0.6),
            ("heat intolerance", 0.5),
            ("palpitations", 0.6),
            ("fine tremor", 0.5),
            ("anxiety|feeling on edge", 0.4),
            ("loose stools", 0.2),
            ("goitre|neck swelling", 0.3),
            ("bulging eyes|exophthalmos", 0.2),
            ("excessive sweating", 0.4),
        ),
        labs={"tsh": LogNormal(0.05, 0.8)},
        orders={"tsh": 0.95},
        age=(25, 55),
    ),
    Disease(
        "copd",
        0.05,
        phenotypes=(
            ("chronic productive cough", 0.7),
            ("breathlessness|dyspnoea", 0.8),
            ("wheeze", 0.6),
            ("current smoker, 40 pack-years|long smoking history", 0.8),
            ("barrel chest", 0.2),
            ("reduced exercise tolerance", 0.5),
        ),
        labs={"wbc": Normal(9.5, 2.5), "crp": LogNormal(10, 0.8), "haemoglobin": Normal(15, 1.4)},
        orders={"crp": 0.7, "nt_probnp": 0.35},
        age=(55, 85),
    ),
    Disease(
        "urinary_tract_infection",
        0.06,
        phenotypes=(
            ("dysuria|burning on passing urine", 0.8),
            ("urinary frequency", 0.7),
            ("urgency", 0.5),
            ("suprapubic pain", 0.5),
            ("blood in the urine|haematuria", 0.2),
            ("cloudy urine", 0.3),
            ("fever", 0.2),
        ),
        labs={"wbc": Normal(11.5, 3), "crp": LogNormal(30, 0.7)},
        orders={"crp": 0.85},
        age=(20, 75),
    ),
    Disease(
        "nafld",
        0.05,
        phenotypes=(
            ("obesity|BMI 34", 0.6),
            ("right upper quadrant discomfort", 0.3),
            ("fatigue", 0.4),
            ("hepatomegaly", 0.3),
            ("incidentally raised liver enzymes", 0.5),
        ),
        labs={"alt": LogNormal(60, 0.4), "ferritin": LogNormal(300, 0.6), "platelets": Normal(215, 50)},
        orders={"ferritin": 0.4, "alt": 0.98, "ceruloplasmin": 0.1},
    ),
    Disease(
        "vitamin_b12_deficiency",
        0.04,
        phenotypes=(
            ("fatigue", 0.6),
            ("pins and needles in the feet|paraesthesia", 0.5),
            ("sore red tongue|glossitis", 0.3),
            ("pallor", 0.4),
            ("memory problems", 0.2),
            ("unsteady gait", 0.2),
        ),
        labs={"haemoglobin": Normal(10.5, 1.3), "mcv": Normal(108, 6), "transferrin_saturation": Normal(35, 10)},
        orders={"ferritin": 0.6, "transferrin_saturation": 0.4},
        age=(50, 85),
    ),
    Disease(
        "gout",
        0.05,
        phenotypes=(
            ("acutely painful swollen big toe|first MTP joint swelling", 0.8),
            ("red hot joint", 0.6),
            ("tophi", 0.15),
            ("previous similar episodes", 0.4),
            ("pain that started overnight", 0.3),
        ),
        labs={"urate": Normal(8.8, 1.3), "crp": LogNormal(25, 0.7), "creatinine": LogNormal(1.15, 0.2)},
        orders={"urate": 0.85, "crp": 0.8},
    ),
    Disease(
        "atrial_fibrillation",
        0.05,
        phenotypes=(
            ("palpitations", 0.7),
            ("irregularly irregular pulse", 0.7),
            ("breathlessness", 0.4),
            ("dizziness", 0.3),
            ("fatigue", 0.3),
            ("chest discomfort", 0.2),
        ),
        labs={"nt_probnp": LogNormal(700, 0.7), "tsh": LogNormal(1.3, 0.5)},
        orders={"tsh": 0.8, "nt_probnp": 0.6},
        age=(55, 85),
    ),
    Disease(
        "rheumatoid_arthritis",
        0.04,
        phenotypes=(
            ("symmetrical pain in the small joints of the hands", 0.8),
            ("morning stiffness over an hour", 0.7),
            ("swollen knuckles|joint swelling", 0.6),
            ("fatigue", 0.4),
            ("rheumatoid nodules", 0.1),
        ),
        labs={
            "crp": LogNormal(20, 0.7),
            "haemoglobin": Normal(12.2, 1.2),
            "platelets": Normal(350, 70),
            "ferritin": LogNormal(250, 0.6),
        },
        orders={"crp": 0.9},
        age=(30, 70),
    ),
    Disease(
        "migraine",
        0.06,
        phenotypes=(
            ("unilateral throbbing headache", 0.8),
            ("photophobia|sensitivity to light", 0.6),
            ("nausea", 0.6),
            ("visual aura", 0.3),
            ("sensitivity to noise", 0.4),
            ("vomiting", 0.3),
        ),
        age=(18, 50),
    ),
    # Rare genetic diseases: presentations from HPO (phenotype.hpoa), labs invented here.
    Disease(
        "marfan_syndrome",
        0.02,
        labs={"nt_probnp": LogNormal(110, 0.8)},
        orders={"nt_probnp": 0.3},
        age=(15, 45),
    ),
    Disease(
        "fabry_disease",
        0.015,
        labs={"creatinine": LogNormal(1.5, 0.3), "uacr": LogNormal(250, 0.8), "nt_probnp": LogNormal(400, 0.8)},
        orders={"uacr": 0.7, "nt_probnp": 0.4},
        age=(20, 50),
    ),
    Disease(
        "wilson_disease",
        0.015,
        labs={"alt": LogNormal(85, 0.5), "ceruloplasmin": Normal(10, 4), "haemoglobin": Normal(12.5, 1.5)},
        orders={"ceruloplasmin": 0.65, "alt": 0.98},
        age=(12, 40),
    ),
    Disease(
        "gaucher_disease_type1",
        0.01,
        labs={
            "platelets": Normal(95, 35),
            "haemoglobin": Normal(11.5, 1.5),
            "ferritin": LogNormal(600, 0.6),
            "wbc": Normal(5, 1.3),
            "alt": LogNormal(35, 0.4),
        },
        orders={"ferritin": 0.6},
        age=(15, 50),
    ),
    Disease(
        "hereditary_haemochromatosis",
        0.025,
        labs={
            "ferritin": LogNormal(1100, 0.5),
            "transferrin_saturation": Normal(70, 12),
            "alt": LogNormal(50, 0.4),
            "glucose": LogNormal(115, 0.2),
        },
        orders={"ferritin": 0.95, "transferrin_saturation": 0.9, "hba1c": 0.5},
        age=(35, 65),
    ),
    Disease(
        "ehlers_danlos_classic",
        0.015,
        age=(15, 45),
    ),
    Disease(
        "hht_type1",
        0.015,
        labs={
            "haemoglobin": Normal(10.8, 1.8),
            "mcv": Normal(79, 6),
            "ferritin": LogNormal(15, 0.6),
            "transferrin_saturation": Normal(12, 5),
        },
        orders={"ferritin": 0.8, "transferrin_saturation": 0.7},
        age=(25, 65),
    ),
    Disease(
        "alport_syndrome_x_linked",
        0.01,
        labs={"creatinine": LogNormal(1.8, 0.4), "uacr": LogNormal(600, 0.7)},
        orders={"uacr": 0.8},
        age=(15, 45),
    ),
)
DISEASE_KEYS: tuple[str, ...] = tuple(d.key for d in DISEASES)
RARE_KEYS: tuple[str, ...] = tuple(d.key for d in DISEASES if d.rare)
