"""The drug catalogue adverse-drug-reaction assessment knows: ingredient -> class, the reactions the class is
documented to risk, a usual single-unit strength, interaction roles and admet-ai's hERG-block prediction.

hERG comes from admet-ai's own predictions for DrugBank's approved drugs
(`admet_ai/resources/data/drugbank_approved.csv`, read from the installed wheel, never copied into the repository);
without admet-ai installed every hERG is None and a warning is logged once.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from services.research.timeline import Entry

log = logging.getLogger(__name__)

MYOPATHY = "myopathy"
AKI = "acute-kidney-injury"
HEPATOTOXICITY = "hepatotoxicity"
QT = "qt-prolongation"
REACTIONS = (MYOPATHY, AKI, HEPATOTOXICITY, QT)

# Interaction roles a drug plays for another drug's reaction.
CYP3A4_INHIBITOR = "cyp3a4-inhibitor"  # raises simvastatin/atorvastatin exposure: myopathy
STATIN_INTERACTING = "statin-interacting"  # fibrates, ciclosporin: myopathy by other mechanisms
NEPHROTOXIC = "nephrotoxic"  # the "triple whammy" members: NSAID, ACE inhibitor/ARB, diuretic
RAAS = "raas"
DIURETIC = "diuretic"
KNOWN_QT = "known-qt"  # CredibleMeds-style "known risk of torsades de pointes"
HEPATOTOXIC = "hepatotoxic"

CLASSES = (
    "statin",
    "nsaid",
    "ace-inhibitor",
    "angiotensin-receptor-blocker",
    "diuretic",
    "macrolide",
    "fluoroquinolone",
    "azole-antifungal",
    "antiarrhythmic",
    "calcium-channel-blocker",
    "antidepressant",
    "antipsychotic",
    "antiemetic",
    "opioid",
    "analgesic",
    "antituberculosis",
    "penicillin",
    "anticonvulsant",
    "beta-blocker",
    "sedative",
    "other",
)


@dataclass(frozen=True, slots=True)
class Drug:
    ingredient: str  # lower-case, as DrugBank names it (the hERG look-up key)
    drug_class: str  # one of CLASSES
    reactions: frozenset[str]  # what this catalogue documents the drug to risk (QT also for any known-QT drug)
    usual_dose_mg: float | None  # a usual single-unit strength; the dose ratio's denominator
    roles: frozenset[str] = frozenset()
    herg: float | None = None  # admet-ai's predicted probability of hERG block; None when unavailable
    match: str = ""  # regex on the lower-case RxNorm display; the ingredient when empty
    drugbank_id: str | None = None  # DrugBank accession (from the same admet-ai table); None when unavailable

    @property
    def pattern(self) -> str:
        return self.match or rf"\b{re.escape(self.ingredient)}\b"


def _d(ingredient: str, cls: str, reactions: tuple[str, ...], dose: float | None, *roles: str, match: str = "") -> Drug:
    qt = (QT,) if KNOWN_QT in roles else ()
    return Drug(ingredient, cls, frozenset(reactions + qt), dose, frozenset(roles), None, match)


_M, _A, _H = (MYOPATHY,), (AKI,), (HEPATOTOXICITY,)
# Combination products first: the first entry whose pattern matches the display wins.
_CATALOGUE = (
    _d("amoxicillin", "penicillin", _H, 500, HEPATOTOXIC, match=r"\bamoxicillin\b.*\bclavulanate\b"),
    _d("simvastatin", "statin", _M + _H, 20),
    _d("atorvastatin", "statin", _M + _H, 20),
    _d("rosuvastatin", "statin", _M + _H, 10),
    _d("pravastatin", "statin", _M + _H, 40),
    _d("lovastatin", "statin", _M + _H, 20),
    _d("fluvastatin", "statin", _M + _H, 40),
    _d("ibuprofen", "nsaid", _A, 400, NEPHROTOXIC),
    _d("naproxen", "nsaid", _A, 250, NEPHROTOXIC),
    _d("diclofenac", "nsaid", _A + _H, 50, NEPHROTOXIC),
    _d("celecoxib", "nsaid", _A, 200, NEPHROTOXIC),
    _d("meloxicam", "nsaid", _A, 7.5, NEPHROTOXIC),
    _d("lisinopril", "ace-inhibitor", _A, 10, NEPHROTOXIC, RAAS),
    _d("enalapril", "ace-inhibitor", _A, 10, NEPHROTOXIC, RAAS),
    _d("ramipril", "ace-inhibitor", _A, 5, NEPHROTOXIC, RAAS),
    _d("losartan", "angiotensin-receptor-blocker", _A, 50, NEPHROTOXIC, RAAS),
    _d("valsartan", "angiotensin-receptor-blocker", _A, 80, NEPHROTOXIC, RAAS),
    _d("hydrochlorothiazide", "diuretic", _A, 25, NEPHROTOXIC, DIURETIC),
    _d("chlorthalidone", "diuretic", _A, 25, NEPHROTOXIC, DIURETIC),
    _d("furosemide", "diuretic", _A, 40, NEPHROTOXIC, DIURETIC),
    _d("spironolactone", "diuretic", _A, 25, NEPHROTOXIC, DIURETIC),
    _d("azithromycin", "macrolide", (), 250, KNOWN_QT),
    _d("clarithromycin", "macrolide", (), 500, KNOWN_QT, CYP3A4_INHIBITOR),
    _d("erythromycin", "macrolide", (), 250, KNOWN_QT, CYP3A4_INHIBITOR),
    _d("levofloxacin", "fluoroquinolone", (), 500, KNOWN_QT),
    _d("moxifloxacin", "fluoroquinolone", (), 400, KNOWN_QT),
    _d("ciprofloxacin", "fluoroquinolone", (), 500, KNOWN_QT),
    _d("ketoconazole", "azole-antifungal", _H, 200, CYP3A4_INHIBITOR, HEPATOTOXIC),
    _d("itraconazole", "azole-antifungal", _H, 100, CYP3A4_INHIBITOR, HEPATOTOXIC),
    _d("fluconazole", "azole-antifungal", (), 150, KNOWN_QT),
    _d("amiodarone", "antiarrhythmic", _H, 200, KNOWN_QT, CYP3A4_INHIBITOR),
    _d("sotalol", "antiarrhythmic", (), 80, KNOWN_QT),
    _d("verapamil", "calcium-channel-blocker", (), 80, CYP3A4_INHIBITOR),
    _d("diltiazem", "calcium-channel-blocker", (), 120, CYP3A4_INHIBITOR),
    _d("amlodipine", "calcium-channel-blocker", (), 5),
    _d("citalopram", "antidepressant", (), 20, KNOWN_QT),
    _d("escitalopram", "antidepressant", (), 10, KNOWN_QT),
    _d("fluoxetine", "antidepressant", (), 20),
    _d("sertraline", "antidepressant", (), 50),
    _d("doxepin", "antidepressant", (), 25),
    _d("mirtazapine", "antidepressant", (), 15),
    _d("haloperidol", "antipsychotic", (), 5, KNOWN_QT),
    _d("quetiapine", "antipsychotic", (), 100),
    _d("ondansetron", "antiemetic", (), 4, KNOWN_QT),
    _d("methadone", "opioid", (), 10, KNOWN_QT),
    _d("acetaminophen", "analgesic", _H, 500, HEPATOTOXIC),
    _d("isoniazid", "antituberculosis", _H, 300, HEPATOTOXIC),
    _d("rifampin", "antituberculosis", _H, 600, HEPATOTOXIC),
    _d("valproic acid", "anticonvulsant", _H, 250, HEPATOTOXIC, match=r"\bvalpro(?:ic acid|ate)\b"),
    _d("nitrofurantoin", "other", _H, 100, HEPATOTOXIC),
    _d("gemfibrozil", "other", (), 600, STATIN_INTERACTING),
    _d("cyclosporine", "other", _A, 100, STATIN_INTERACTING, CYP3A4_INHIBITOR, NEPHROTOXIC),
    # Beta blockers and sedatives: no reaction in this catalogue's rules; there for FAERS's tables
    _d("acebutolol", "beta-blocker", (), 200),
    _d("atenolol", "beta-blocker", (), 50),
    _d("bisoprolol", "beta-blocker", (), 5),
    _d("carvedilol", "beta-blocker", (), 12.5),
    _d("metoprolol", "beta-blocker", (), 50),
    _d("nadolol", "beta-blocker", (), 40),
    _d("propranolol", "beta-blocker", (), 40),
    _d("timolol", "beta-blocker", (), 10),
    _d("clonazepam", "sedative", (), 0.5),
    _d("dexmedetomidine", "sedative", (), None),
    _d("diazepam", "sedative", (), 5),
    _d("diphenhydramine", "sedative", (), 25),
    _d("lorazepam", "sedative", (), 1),
    _d("midazolam", "sedative", (), None),
    _d("nitrazepam", "sedative", (), 5),
    _d("temazepam", "sedative", (), 15),
)


def admet_ai_drugbank_csv() -> Path | None:
    """admet-ai's predictions for DrugBank's approved drugs inside the installed wheel (the package is not imported:
    its dependencies are not installed)."""
    spec = importlib.util.find_spec("admet_ai")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "data" / "drugbank_approved.csv"
    return path if path.is_file() else None


@cache
def drugbank_predictions() -> dict[str, tuple[str, float]]:
    """DrugBank name (lower case) -> (DrugBank id, admet-ai's hERG probability); empty (and a warning) without
    admet-ai."""
    path = admet_ai_drugbank_csv()
    if path is None:
        log.warning("admet-ai is not installed: every drug's hERG is None (scripts/bootstrap.sh installs it)")
        return {}
    with path.open(newline="") as f:
        return {
            row["name"].strip().lower(): (row["id"], float(row["hERG"])) for row in csv.DictReader(f) if row.get("hERG")
        }


def herg_predictions() -> dict[str, float]:
    """DrugBank name (lower case) -> admet-ai's hERG probability."""
    return {name: herg for name, (_, herg) in drugbank_predictions().items()}


@cache
def catalogue() -> tuple[Drug, ...]:
    """Every catalogued drug with its hERG and DrugBank id attached."""
    known = drugbank_predictions()
    out = []
    for d in _CATALOGUE:
        drugbank_id, herg = known.get(d.ingredient, (None, None))
        out.append(Drug(d.ingredient, d.drug_class, d.reactions, d.usual_dose_mg, d.roles, herg, d.match, drugbank_id))
    return tuple(out)


def by_ingredient(ingredient: str) -> Drug:
    return next(d for d in catalogue() if d.ingredient == ingredient)


@cache
def _patterns() -> tuple[tuple[re.Pattern[str], Drug], ...]:
    return tuple((re.compile(d.pattern), d) for d in catalogue())


@lru_cache(maxsize=16384)
def classify_display(display: str) -> Drug | None:
    """The catalogued drug an RxNorm display names (the first catalogue entry that matches), or None."""
    text = display.lower()
    return next((d for pattern, d in _patterns() if pattern.search(text)), None)


def classify(entry: Entry) -> Drug | None:
    """The catalogued drug of a MedicationRequest entry, or None when the catalogue does not know it."""
    return classify_display(entry.display)


def dose_ratio(drug: Drug, entry: Entry) -> float | None:
    """The ordered strength over the drug's usual strength; None when either is unknown."""
    if entry.value is None or not drug.usual_dose_mg:
        return None
    return entry.value / drug.usual_dose_mg


def at_risk(drug: Drug, reaction: str) -> bool:
    """Whether a start of `drug` is assessed for `reaction`: documented reactions, and QT for any drug with a hERG
    prediction (the QT rule is driven by hERG block)."""
    return reaction in drug.reactions or (reaction == QT and drug.herg is not None)
