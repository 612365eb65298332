"""The trial-matching concept lexicon: criterion phrases to codes (SNOMED/ICD-10-CM conditions, RxNorm drug classes,
LOINC labs with their UCUM unit), by rule first and by MiniLM sentence similarity for phrases no rule names.

Synthea writes clinical drugs ("Simvastatin 10 MG Oral Tablet"), not ingredients or classes, so a medication concept
matches an ingredient word in the display as well as its listed RxNorm codes. Condition concepts list their
descendants explicitly (no terminology server at match time). Importing this module loads no torch; the first
embedding lookup does, and lexicon embeddings are computed once per process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from services.research.timeline import ICD10CM, LOINC, RXNORM, SNOMED

Kind = Literal["condition", "medication", "lab"]
Method = Literal["rule", "embedding", "none"]
# Below this a nearest term is a guess, not a resolution: on trial phrases MiniLM puts "knee replacement surgery" at
# 0.63 from knee osteoarthritis and "heartburn" at 0.65 from myocardial infarction, "high cholesterol" at 0.68 from
# hyperlipidemia and "raised blood pressure" at 0.77 from hypertension.
EMBEDDING_FLOOR = 0.66


@dataclass(frozen=True, slots=True)
class Concept:
    """A named clinical concept with the phrases that name it and the codes that record it."""

    name: str
    kind: Kind
    terms: tuple[str, ...]
    codes: tuple[tuple[str, str], ...] = ()
    ingredients: tuple[str, ...] = ()  # medication: lower-case words looked for in a drug display
    unit: str = ""  # lab: the UCUM unit values are compared in


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a phrase was resolved: which concept, by which method, with what similarity (1.0 for a rule)."""

    phrase: str
    concept: Concept | None
    method: Method
    score: float


def _sct(*codes: str) -> tuple[tuple[str, str], ...]:
    return tuple((SNOMED, c) for c in codes)


def _icd(*codes: str) -> tuple[tuple[str, str], ...]:
    return tuple((ICD10CM, c) for c in codes)


def _rx(*codes: str) -> tuple[tuple[str, str], ...]:
    return tuple((RXNORM, c) for c in codes)


def _loinc(*codes: str) -> tuple[tuple[str, str], ...]:
    return tuple((LOINC, c) for c in codes)


_T2DM: tuple[str, ...] = ("44054006", "127013003", "368581000119106", "90781000119102", "157141000119108", "422034002")
_T2DM += ("1551000119108", "1501000119109", "97331000119101", "60951000119105", "609566000")
_CKD: tuple[str, ...] = (
    "431855005",
    "431856006",
    "433144002",
    "431857002",
    "433146000",
    "709044004",
    "46177005",
    "700379002",
)
_CKD += ("127013003",)
_MI: tuple[str, ...] = ("22298006", "401303003", "401314000", "399211009", "57054005", "70422006")
_CAD: tuple[str, ...] = (*_MI, "53741008", "414545008", "194828000", "399261000", "414024009")
_CANCER_COLON: tuple[str, ...] = ("363406005", "93761005", "109838007", "94260004")
_CANCER_BREAST: tuple[str, ...] = ("254837009", "353431000119107", "408643008")
_CANCER_PROSTATE: tuple[str, ...] = ("126906006", "92691004", "399068003", "94503003")
_CANCER_LUNG: tuple[str, ...] = ("254637007", "254632001", "424132000", "425048006", "67811000119102", "162573006")
_LEUKAEMIA: tuple[str, ...] = ("91861009", "93143009")

CONDITIONS: tuple[Concept, ...] = (
    Concept(
        "type 2 diabetes mellitus",
        "condition",
        ("type 2 diabetes mellitus", "type 2 diabetes", "t2dm", "diabetes mellitus type 2", "non-insulin-dependent"),
        _sct(*_T2DM) + _icd("E11", "E11.9", "E11.65", "E11.22"),
    ),
    Concept(
        "diabetes mellitus",
        "condition",
        ("diabetes mellitus", "diabetes", "diabetic"),
        _sct("73211009", "46635009", *_T2DM) + _icd("E10", "E11", "E11.9"),
    ),
    Concept(
        "type 1 diabetes mellitus",
        "condition",
        ("type 1 diabetes mellitus", "type 1 diabetes", "t1dm", "insulin-dependent diabetes"),
        _sct("46635009") + _icd("E10"),
    ),
    Concept(
        "prediabetes",
        "condition",
        ("prediabetes", "pre-diabetes", "impaired glucose tolerance"),
        _sct("714628002", "15777000", "9414007") + _icd("R73.03"),
    ),
    Concept("metabolic syndrome", "condition", ("metabolic syndrome",), _sct("237602007") + _icd("E88.81")),
    Concept(
        "hypertension",
        "condition",
        ("essential hypertension", "hypertension", "high blood pressure"),
        _sct("59621000", "38341003", "1201005") + _icd("I10"),
    ),
    Concept(
        "chronic kidney disease",
        "condition",
        ("chronic kidney disease", "ckd", "chronic renal disease", "diabetic kidney disease", "diabetic nephropathy"),
        _sct(*_CKD) + _icd("N18", "N18.1", "N18.2", "N18.3", "N18.4", "N18.5", "N18.6", "E11.22"),
    ),
    Concept(
        "chronic kidney disease stage 1",
        "condition",
        ("chronic kidney disease stage 1", "ckd stage 1"),
        _sct("431855005") + _icd("N18.1"),
    ),
    Concept(
        "chronic kidney disease stage 2",
        "condition",
        ("chronic kidney disease stage 2", "ckd stage 2"),
        _sct("431856006") + _icd("N18.2"),
    ),
    Concept(
        "chronic kidney disease stage 3",
        "condition",
        ("chronic kidney disease stage 3", "ckd stage 3"),
        _sct("433144002", "700379002") + _icd("N18.3"),
    ),
    Concept(
        "chronic kidney disease stage 4",
        "condition",
        ("chronic kidney disease stage 4", "ckd stage 4"),
        _sct("431857002") + _icd("N18.4"),
    ),
    Concept(
        "end-stage renal disease",
        "condition",
        (
            "end-stage renal disease",
            "end stage renal disease",
            "esrd",
            "chronic kidney disease stage 5",
            "ckd stage 5",
            "kidney failure",
        ),
        _sct("46177005", "433146000") + _icd("N18.5", "N18.6"),
    ),
    Concept(
        "hyperlipidaemia",
        "condition",
        (
            "hyperlipidemia",
            "hyperlipidaemia",
            "dyslipidemia",
            "dyslipidaemia",
            "hypercholesterolemia",
            "hypercholesterolaemia",
        ),
        _sct("55822004", "13644009", "370992007") + _icd("E78.5", "E78.0"),
    ),
    Concept(
        "hypertriglyceridaemia",
        "condition",
        ("hypertriglyceridemia", "hypertriglyceridaemia"),
        _sct("302870006") + _icd("E78.1"),
    ),
    Concept("obesity", "condition", ("obesity", "obese"), _sct("162864005", "408512008", "414916001") + _icd("E66")),
    Concept(
        "chronic obstructive pulmonary disease",
        "condition",
        ("chronic obstructive pulmonary disease", "copd", "emphysema", "chronic obstructive bronchitis"),
        _sct("13645005", "87433001", "185086009", "195951007") + _icd("J44", "J44.9", "J43"),
    ),
    Concept("asthma", "condition", ("asthma",), _sct("195967001", "233678006", "304527002") + _icd("J45")),
    Concept(
        "heart failure",
        "condition",
        ("heart failure", "congestive heart failure", "cardiac failure", "chf", "hfref"),
        _sct("84114007", "88805009", "42343007", "703272007", "446221000") + _icd("I50", "I50.9"),
    ),
    Concept(
        "myocardial infarction",
        "condition",
        ("myocardial infarction", "heart attack", "stemi", "nstemi"),
        _sct(*_MI) + _icd("I21", "I22", "I25.2"),
    ),
    Concept(
        "coronary artery disease",
        "condition",
        (
            "coronary artery disease",
            "coronary heart disease",
            "ischemic heart disease",
            "ischaemic heart disease",
            "established cardiovascular disease",
        ),
        _sct(*_CAD) + _icd("I25", "I25.10", "I21"),
    ),
    Concept("atrial fibrillation", "condition", ("atrial fibrillation", "af"), _sct("49436004") + _icd("I48")),
    Concept(
        "stroke",
        "condition",
        ("stroke", "cerebrovascular accident", "ischemic stroke", "ischaemic stroke"),
        _sct("230690007", "422504002") + _icd("I63"),
    ),
    Concept(
        "osteoporosis",
        "condition",
        ("osteoporosis", "osteoporotic fracture"),
        _sct("64859006", "443165006") + _icd("M81", "M80"),
    ),
    Concept(
        "osteoarthritis",
        "condition",
        ("osteoarthritis",),
        _sct("396275006", "239873007", "239872002", "201834006") + _icd("M17", "M16", "M19.90"),
    ),
    Concept(
        "osteoarthritis of the knee",
        "condition",
        ("osteoarthritis of the knee", "knee osteoarthritis"),
        _sct("239873007") + _icd("M17"),
    ),
    Concept("rheumatoid arthritis", "condition", ("rheumatoid arthritis",), _sct("69896004") + _icd("M06.9")),
    Concept(
        "alzheimer's disease",
        "condition",
        ("alzheimer's disease", "alzheimer disease", "alzheimers disease", "alzheimer's dementia"),
        _sct("26929004", "230265002") + _icd("G30", "G30.9"),
    ),
    Concept("dementia", "condition", ("dementia",), _sct("52448006", "26929004", "230265002") + _icd("F03", "G30")),
    Concept(
        "parkinson's disease",
        "condition",
        ("parkinson's disease", "parkinson disease", "parkinsonism"),
        _sct("49049000") + _icd("G20"),
    ),
    Concept("migraine", "condition", ("migraine",), _sct("37796009", "124171000119105") + _icd("G43")),
    Concept(
        "major depressive disorder",
        "condition",
        ("major depressive disorder", "major depression", "depressive disorder"),
        _sct("370143000", "36923009") + _icd("F32", "F33"),
    ),
    Concept(
        "generalized anxiety disorder",
        "condition",
        ("generalized anxiety disorder", "generalised anxiety disorder", "gad"),
        _sct("21897009") + _icd("F41.1"),
    ),
    Concept("epilepsy", "condition", ("epilepsy", "seizure disorder"), _sct("84757009", "128613002") + _icd("G40")),
    Concept(
        "obstructive sleep apnoea",
        "condition",
        ("obstructive sleep apnea", "obstructive sleep apnoea", "sleep apnea", "sleep apnoea", "osa"),
        _sct("78275009", "73430006") + _icd("G47.33"),
    ),
    Concept(
        "gastro-oesophageal reflux disease",
        "condition",
        ("gastroesophageal reflux disease", "gastro-oesophageal reflux disease", "gerd", "reflux disease"),
        _sct("235595009") + _icd("K21.9"),
    ),
    Concept("anaemia", "condition", ("anemia", "anaemia"), _sct("271737000") + _icd("D64.9")),
    Concept(
        "chronic pain",
        "condition",
        ("chronic pain", "chronic neck pain"),
        _sct("82423001", "278860009", "1121000119107") + _icd("G89.29"),
    ),
    Concept("chronic low back pain", "condition", ("chronic low back pain",), _sct("278860009") + _icd("M54.5")),
    Concept(
        "colorectal cancer",
        "condition",
        ("colorectal cancer", "colon cancer", "malignant neoplasm of colon", "colorectal carcinoma"),
        _sct(*_CANCER_COLON) + _icd("C18", "C18.9"),
    ),
    Concept(
        "breast cancer",
        "condition",
        ("breast cancer", "malignant neoplasm of breast", "breast carcinoma"),
        _sct(*_CANCER_BREAST) + _icd("C50", "C50.919"),
    ),
    Concept(
        "prostate cancer",
        "condition",
        ("prostate cancer", "carcinoma of prostate", "neoplasm of prostate"),
        _sct(*_CANCER_PROSTATE) + _icd("C61"),
    ),
    Concept(
        "lung cancer",
        "condition",
        ("lung cancer", "carcinoma of lung", "lung carcinoma"),
        _sct(*_CANCER_LUNG) + _icd("C34", "C34.90"),
    ),
    Concept(
        "non-small cell lung cancer",
        "condition",
        ("non-small cell lung cancer", "nsclc", "non-small cell carcinoma of lung"),
        _sct("254637007", "424132000", "425048006") + _icd("C34.90"),
    ),
    Concept(
        "small cell lung cancer",
        "condition",
        ("small cell lung cancer", "sclc", "small cell carcinoma of lung"),
        _sct("254632001", "67811000119102") + _icd("C34.91"),
    ),
    Concept("leukaemia", "condition", ("leukemia", "leukaemia"), _sct("93143009", "91861009") + _icd("C95")),
    Concept(
        "kidney transplant",
        "condition",
        ("kidney transplant", "renal transplant", "kidney transplantation"),
        _sct("161665007", "213150003") + _icd("Z94.0"),
    ),
    Concept("bipolar disorder", "condition", ("bipolar disorder", "bipolar"), _sct("13746004") + _icd("F31")),
    Concept("hepatitis b", "condition", ("hepatitis b", "chronic hepatitis b"), _sct("61977001") + _icd("B18.1")),
    Concept(
        "malignancy",
        "condition",
        ("malignancy", "malignant neoplasm", "cancer", "malignant disease"),
        _sct(*_CANCER_COLON, *_CANCER_BREAST, *_CANCER_PROSTATE, *_CANCER_LUNG, *_LEUKAEMIA)
        + _icd("C18", "C50", "C61", "C34", "C92"),
    ),
    Concept(
        "colon polyp",
        "condition",
        ("colon polyp", "colonic polyp", "polyp of colon", "colorectal polyp"),
        _sct("68496003", "713197008") + _icd("K63.5"),
    ),
    Concept(
        "cirrhosis",
        "condition",
        ("cirrhosis", "cirrhosis of liver", "liver cirrhosis"),
        _sct("19943007") + _icd("K74.60"),
    ),
    Concept("hepatitis c", "condition", ("hepatitis c", "chronic hepatitis c"), _sct("128302006") + _icd("B18.2")),
    Concept(
        "hiv infection",
        "condition",
        ("hiv", "human immunodeficiency virus"),
        _sct("86406008", "62479008") + _icd("B20"),
    ),
    Concept("hypothyroidism", "condition", ("hypothyroidism",), _sct("83664006", "40930008") + _icd("E03.9")),
    Concept(
        "substance use disorder",
        "condition",
        (
            "substance use disorder",
            "drug abuse",
            "drug dependence",
            "alcohol use disorder",
            "alcoholism",
            "opioid use disorder",
            "alcohol or drug abuse",
        ),
        _sct("6525002", "7200002", "5602001", "66590003") + _icd("F11", "F19", "F10"),
    ),
    Concept("sepsis", "condition", ("sepsis",), _sct("91302008") + _icd("A41.9")),
    Concept(
        "pregnancy",
        "condition",
        ("pregnancy", "pregnant", "breastfeeding", "lactating"),
        _sct("72892002", "77386006", "398254007") + _icd("Z33.1"),
    ),
)

MEDICATIONS: tuple[Concept, ...] = (
    Concept(
        "insulin",
        "medication",
        ("insulin", "insulin therapy"),
        _rx("106892", "865098", "311040", "847230"),
        ("insulin",),
    ),
    Concept("metformin", "medication", ("metformin",), _rx("860975", "861007", "861004"), ("metformin",)),
    Concept(
        "sulfonylurea",
        "medication",
        ("sulfonylurea", "sulphonylurea"),
        _rx("310488", "314006"),
        ("glipizide", "glyburide", "glimepiride", "gliclazide"),
    ),
    Concept(
        "glp-1 receptor agonist",
        "medication",
        ("glp-1 receptor agonist", "glp-1 agonist", "glp-1"),
        _rx("897122", "1991306"),
        ("liraglutide", "semaglutide", "dulaglutide", "exenatide"),
    ),
    Concept(
        "sglt2 inhibitor",
        "medication",
        ("sglt2 inhibitor", "sglt-2 inhibitor"),
        _rx("1545653"),
        ("empagliflozin", "dapagliflozin", "canagliflozin"),
    ),
    Concept(
        "statin",
        "medication",
        ("statin", "statins", "hmg-coa reductase inhibitor", "lipid-lowering therapy"),
        _rx("314231", "198211", "259255", "617310", "859419", "200345"),
        ("simvastatin", "atorvastatin", "rosuvastatin", "pravastatin", "lovastatin"),
    ),
    Concept(
        "ace inhibitor",
        "medication",
        ("ace inhibitor", "ace inhibitors", "angiotensin-converting enzyme inhibitor"),
        _rx("314076", "261962", "898359"),
        ("lisinopril", "ramipril", "enalapril", "benazepril", "captopril", "quinapril"),
    ),
    Concept(
        "angiotensin receptor blocker",
        "medication",
        ("angiotensin receptor blocker", "angiotensin ii receptor blocker", "arb"),
        _rx("979485"),
        ("losartan", "valsartan", "irbesartan", "olmesartan", "candesartan"),
    ),
    Concept(
        "thiazide diuretic",
        "medication",
        ("thiazide diuretic", "thiazide"),
        _rx("310798"),
        ("hydrochlorothiazide", "chlorthalidone", "indapamide"),
    ),
    Concept(
        "calcium channel blocker",
        "medication",
        ("calcium channel blocker",),
        _rx("308136", "897685"),
        ("amlodipine", "verapamil", "diltiazem", "nifedipine"),
    ),
    Concept(
        "beta blocker",
        "medication",
        ("beta blocker", "beta-blocker", "beta-adrenergic blocker"),
        _rx("866427", "866412", "200031", "856519"),
        ("metoprolol", "carvedilol", "propranolol", "atenolol", "bisoprolol", "nebivolol"),
    ),
    Concept(
        "loop diuretic", "medication", ("loop diuretic",), _rx("313988"), ("furosemide", "bumetanide", "torsemide")
    ),
    Concept(
        "anticoagulant",
        "medication",
        ("anticoagulant", "anticoagulants", "anticoagulation", "oral anticoagulant"),
        _rx("855332", "1364430", "1232082"),
        ("warfarin", "apixaban", "rivaroxaban", "dabigatran", "edoxaban", "heparin", "enoxaparin"),
    ),
    Concept(
        "p2y12 inhibitor",
        "medication",
        ("p2y12 inhibitor", "clopidogrel", "ticagrelor"),
        _rx("309362", "1116635"),
        ("clopidogrel", "ticagrelor", "prasugrel"),
    ),
    Concept(
        "nsaid",
        "medication",
        ("nsaid", "nsaids", "non-steroidal anti-inflammatory drug"),
        _rx("198405", "310965", "206905", "849574"),
        ("ibuprofen", "naproxen", "diclofenac", "celecoxib", "meloxicam"),
    ),
    Concept(
        "opioid",
        "medication",
        ("opioid", "opioids", "opioid analgesic"),
        _rx("1049221", "856987", "1860154"),
        ("oxycodone", "hydrocodone", "fentanyl", "morphine", "tramadol", "meperidine", "buprenorphine", "codeine"),
    ),
    Concept(
        "inhaled corticosteroid",
        "medication",
        ("inhaled corticosteroid", "inhaled corticosteroids", "inhaled steroid"),
        _rx("896209", "896001"),
        ("fluticasone", "budesonide", "beclomethasone", "mometasone"),
    ),
    Concept(
        "short-acting beta agonist",
        "medication",
        ("short-acting beta agonist", "albuterol", "salbutamol"),
        _rx("245314", "630208", "745679"),
        ("albuterol", "salbutamol"),
    ),
    Concept(
        "bisphosphonate",
        "medication",
        ("bisphosphonate", "bisphosphonates"),
        _rx("904419"),
        ("alendronic", "alendronate", "risedronate", "ibandronate", "zoledronic"),
    ),
    Concept(
        "ssri",
        "medication",
        ("ssri", "selective serotonin reuptake inhibitor", "antidepressant"),
        _rx("312938", "349332", "310385"),
        ("sertraline", "fluoxetine", "escitalopram", "citalopram", "paroxetine"),
    ),
    Concept("levodopa", "medication", ("levodopa", "carbidopa/levodopa"), _rx("197444"), ("levodopa",)),
    Concept(
        "cholinesterase inhibitor",
        "medication",
        ("cholinesterase inhibitor", "acetylcholinesterase inhibitor"),
        _rx("310436", "1599803"),
        ("donepezil", "galantamine", "rivastigmine"),
    ),
    Concept("topiramate", "medication", ("topiramate",), _rx("199889"), ("topiramate",)),
    Concept("propranolol", "medication", ("propranolol",), _rx("856519"), ("propranolol",)),
    Concept(
        "systemic corticosteroid",
        "medication",
        ("systemic corticosteroid", "systemic corticosteroids", "oral corticosteroid", "oral corticosteroids"),
        _rx("312615", "1743726"),
        ("prednisone", "prednisolone", "methylprednisolone", "dexamethasone"),
    ),
    Concept("digoxin", "medication", ("digoxin",), _rx("197604"), ("digoxin",)),
    Concept(
        "levothyroxine",
        "medication",
        ("levothyroxine", "thyroid hormone replacement"),
        _rx("966222"),
        ("levothyroxine",),
    ),
    Concept(
        "immunosuppressant",
        "medication",
        ("immunosuppressant", "immunosuppressive therapy"),
        _rx("1664463"),
        ("tacrolimus", "cyclosporine", "mycophenolate", "azathioprine", "methotrexate"),
    ),
    Concept(
        "antiretroviral therapy",
        "medication",
        ("antiretroviral therapy", "antiretroviral"),
        (),
        ("emtricitabine", "tenofovir", "zidovudine", "ritonavir", "lopinavir", "efavirenz", "dolutegravir"),
    ),
    Concept(
        "chemotherapy",
        "medication",
        ("chemotherapy", "cytotoxic chemotherapy"),
        (),
        (
            "cisplatin",
            "carboplatin",
            "paclitaxel",
            "docetaxel",
            "cyclophosphamide",
            "doxorubicin",
            "fluorouracil",
            "oxaliplatin",
            "capecitabine",
            "epirubicin",
            "pemetrexed",
            "etoposide",
        ),
    ),
    Concept("aspirin", "medication", ("aspirin",), _rx("243670", "2563431"), ("aspirin",)),
    Concept(
        "vitamin k antagonist",
        "medication",
        ("vitamin k antagonist", "vitamin k antagonists"),
        _rx("855332"),
        ("warfarin", "acenocoumarol", "phenprocoumon"),
    ),
)


def _ingredient_concepts(classes: tuple[Concept, ...]) -> tuple[Concept, ...]:
    """Each ingredient of a drug class is also a concept of its own, so "warfarin" means warfarin, not any
    anticoagulant."""
    named = {t for c in classes for t in c.terms}
    out: dict[str, Concept] = {}
    for c in classes:
        for word in c.ingredients:
            if word not in named and word not in out:
                codes = tuple(code for code in c.codes if len(c.ingredients) == 1)
                out[word] = Concept(word, "medication", (word,), codes, (word,))
    return tuple(out.values())


MEDICATIONS += _ingredient_concepts(MEDICATIONS)

LABS: tuple[Concept, ...] = (
    Concept(
        "HbA1c",
        "lab",
        ("hba1c", "haemoglobin a1c", "hemoglobin a1c", "glycated haemoglobin", "a1c"),
        _loinc("4548-4", "17856-6"),
        unit="%",
    ),
    Concept("serum creatinine", "lab", ("serum creatinine", "creatinine"), _loinc("2160-0", "38483-4"), unit="mg/dL"),
    Concept(
        "eGFR",
        "lab",
        ("egfr", "estimated glomerular filtration rate", "glomerular filtration rate"),
        _loinc("33914-3", "62238-1", "98979-8", "48642-3", "48643-1"),
        unit="mL/min/{1.73_m2}",
    ),
    Concept("total cholesterol", "lab", ("total cholesterol",), _loinc("2093-3"), unit="mg/dL"),
    Concept(
        "LDL cholesterol",
        "lab",
        ("ldl cholesterol", "ldl-c", "ldl", "low-density lipoprotein cholesterol"),
        _loinc("18262-6", "13457-7", "2089-1"),
        unit="mg/dL",
    ),
    Concept("HDL cholesterol", "lab", ("hdl cholesterol", "hdl-c", "hdl"), _loinc("2085-9"), unit="mg/dL"),
    Concept("triglycerides", "lab", ("triglycerides", "triglyceride"), _loinc("2571-8"), unit="mg/dL"),
    Concept(
        "glucose",
        "lab",
        ("fasting plasma glucose", "fasting glucose", "plasma glucose", "blood glucose"),
        _loinc("2339-0", "2345-7", "1558-6"),
        unit="mg/dL",
    ),
    Concept(
        "systolic blood pressure",
        "lab",
        ("systolic blood pressure", "systolic bp", "sbp"),
        _loinc("8480-6"),
        unit="mm[Hg]",
    ),
    Concept(
        "diastolic blood pressure",
        "lab",
        ("diastolic blood pressure", "diastolic bp", "dbp"),
        _loinc("8462-4"),
        unit="mm[Hg]",
    ),
    Concept("BMI", "lab", ("body mass index", "bmi"), _loinc("39156-5"), unit="kg/m2"),
    Concept("body weight", "lab", ("body weight",), _loinc("29463-7"), unit="kg"),
    Concept("ALT", "lab", ("alanine aminotransferase", "alt"), _loinc("1742-6"), unit="U/L"),
    Concept("AST", "lab", ("aspartate aminotransferase", "ast"), _loinc("1920-8"), unit="U/L"),
    Concept(
        "urine albumin-to-creatinine ratio",
        "lab",
        ("urine albumin-to-creatinine ratio", "albumin-to-creatinine ratio", "uacr", "microalbumin/creatinine ratio"),
        _loinc("14959-1", "9318-7"),
        unit="mg/g",
    ),
    Concept("haemoglobin", "lab", ("haemoglobin", "hemoglobin"), _loinc("718-7"), unit="g/dL"),
    Concept("platelet count", "lab", ("platelet count", "platelets"), _loinc("777-3"), unit="10*3/uL"),
    Concept("serum potassium", "lab", ("serum potassium", "potassium"), _loinc("2823-3", "6298-4"), unit="mmol/L"),
    Concept("serum sodium", "lab", ("serum sodium", "sodium"), _loinc("2951-2", "2947-0"), unit="mmol/L"),
    Concept(
        "bone mineral density T-score",
        "lab",
        ("t-score", "bone mineral density t-score"),
        _loinc("38265-5", "38263-0", "38262-2", "80948-3"),
        unit="{T-score}",
    ),
    Concept(
        "pain severity score",
        "lab",
        ("pain severity", "pain score", "pain intensity"),
        _loinc("72514-3"),
        unit="{score}",
    ),
    Concept("GAD-7 score", "lab", ("gad-7 score", "gad-7"), _loinc("70274-6"), unit="{score}"),
    Concept("PHQ-9 score", "lab", ("phq-9 score", "phq-9"), _loinc("44261-6"), unit="{score}"),
)

LEXICON: tuple[Concept, ...] = CONDITIONS + MEDICATIONS + LABS
_BY_NAME = {c.name: c for c in LEXICON}
_LAB_BY_LOINC = {code: c for c in LABS for _, code in c.codes}

# Unit spellings seen in registries and FHIR, mapped to the UCUM code used here.
UNIT_ALIASES = {
    "%": "%",
    "percent": "%",
    "mmol/mol": "mmol/mol",
    "mg/dl": "mg/dL",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "mmol/l": "mmol/L",
    "ml/min/1.73 m2": "mL/min/{1.73_m2}",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73 m²": "mL/min/{1.73_m2}",
    "ml/min/{1.73_m2}": "mL/min/{1.73_m2}",
    "ml/min": "mL/min/{1.73_m2}",  # Synthea writes some MDRD eGFR results per minute without the area
    "kg/m2": "kg/m2",
    "kg/m²": "kg/m2",
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "u/l": "U/L",
    "iu/l": "U/L",
    "mg/g": "mg/g",
    "mg/mmol": "mg/mmol",
    "g/dl": "g/dL",
    "g/l": "g/L",
    "kg": "kg",
    "10*3/ul": "10*3/uL",
    "x10^9/l": "10*3/uL",
    "{t-score}": "{T-score}",
    "{score}": "{score}",
}

# (concept, from unit) -> function to the concept's unit. Creatinine 88.42 umol/L per mg/dL; the IFCC-NGSP master
# equation for HbA1c; cholesterol 38.67 and triglycerides 88.57 mg/dL per mmol/L; glucose 18.016 mg/dL per mmol/L.
_TO_CANONICAL: dict[tuple[str, str], Callable[[float], float]] = {
    ("serum creatinine", "umol/L"): lambda v: v / 88.42,
    ("HbA1c", "mmol/mol"): lambda v: v * 0.09148 + 2.152,
    ("total cholesterol", "mmol/L"): lambda v: v * 38.67,
    ("LDL cholesterol", "mmol/L"): lambda v: v * 38.67,
    ("HDL cholesterol", "mmol/L"): lambda v: v * 38.67,
    ("triglycerides", "mmol/L"): lambda v: v * 88.57,
    ("glucose", "mmol/L"): lambda v: v * 18.016,
    ("urine albumin-to-creatinine ratio", "mg/mmol"): lambda v: v * 8.842,
    ("haemoglobin", "g/L"): lambda v: v / 10,
}


def normalise_unit(unit: str) -> str:
    """A unit as written (registry text or FHIR valueQuantity) to its UCUM code here; unknown units pass through."""
    return UNIT_ALIASES.get(unit.strip().lower(), unit.strip())


def to_canonical(concept: Concept, value: float, unit: str) -> float | None:
    """A lab value in the concept's unit; None when the unit cannot be converted (the verdict is then unknown)."""
    ucum = normalise_unit(unit) if unit else concept.unit
    if ucum == concept.unit:
        return value
    convert = _TO_CANONICAL.get((concept.name, ucum))
    return convert(value) if convert else None


def by_name(name: str) -> Concept | None:
    return _BY_NAME.get(name)


def lab_for_loinc(loinc: str) -> Concept | None:
    return _LAB_BY_LOINC.get(loinc)


def medication_matches(concept: Concept, system: str, code: str, display: str) -> bool:
    """A drug record is in the class when its RxNorm code is listed or an ingredient word is in its display."""
    if (system, code) in concept.codes:
        return True
    return not display_words(display).isdisjoint(concept.ingredients)


def display_words(display: str) -> frozenset[str]:
    """Lower-case words of a drug display: "24 HR Metformin hydrochloride 500 MG" -> {"metformin", ...}."""
    return frozenset(re.findall(r"[a-z]+", display.lower()))


@lru_cache(maxsize=1)
def _term_patterns() -> tuple[tuple[re.Pattern[str], Concept, str], ...]:
    # Longest terms first, so "type 2 diabetes mellitus" wins over "diabetes mellitus".
    pairs = sorted(((t, c) for c in LEXICON for t in c.terms), key=lambda p: -len(p[0]))
    return tuple((re.compile(rf"(?<![\w-]){re.escape(t)}(?!\w)"), c, t) for t, c in pairs)


def find_terms(text: str, kind: Kind | None = None) -> list[tuple[int, int, Concept]]:
    """Non-overlapping rule matches (start, end, concept) in lower-case text, in reading order."""
    taken: list[tuple[int, int, Concept]] = []
    for pattern, concept, _ in _term_patterns():
        if kind is not None and concept.kind != kind:
            continue
        for m in pattern.finditer(text):
            if all(m.end() <= s or m.start() >= e for s, e, _ in taken):
                taken.append((m.start(), m.end(), concept))
    return sorted(taken, key=lambda t: t[0])


@lru_cache(maxsize=1)
def _lexicon_vectors() -> tuple[tuple[tuple[str, Concept], ...], np.ndarray]:
    from services.common.sentences import embed

    pairs = tuple((t, c) for c in LEXICON for t in c.terms if len(t) > 3)
    return pairs, embed([t for t, _ in pairs])


def resolve(phrase: str, kind: Kind | None = None, floor: float = EMBEDDING_FLOOR) -> Resolution:
    """A phrase to a concept: a lexicon term in it (rule), else the nearest lexicon term by MiniLM cosine when it
    reaches `floor` (embedding), else no concept."""
    text = phrase.lower().strip()
    found = find_terms(text, kind)
    if found:
        return Resolution(phrase, found[0][2], "rule", 1.0)
    if not text:
        return Resolution(phrase, None, "none", 0.0)
    from services.common.sentences import embed

    pairs, vectors = _lexicon_vectors()
    scores = vectors @ embed([text])[0]
    order = np.argsort(-scores)
    for i in order:
        _, concept = pairs[int(i)]
        if kind is None or concept.kind == kind:
            score = float(scores[int(i)])
            if score >= floor:
                return Resolution(phrase, concept, "embedding", round(score, 4))
            return Resolution(phrase, None, "none", round(score, 4))
    return Resolution(phrase, None, "none", 0.0)
