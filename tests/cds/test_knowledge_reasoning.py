import math

import pytest

from services.cds.knowledge.hpo import Annotation, Term, build
from services.cds.knowledge.reasoning import (
    build_index,
    default_index,
    disease_to_patient_all,
    mica,
    patient_to_disease_all,
    rank,
    score_pairs,
    shortest_path_up,
)

pytestmark = pytest.mark.unit

ALL, ABNORMAL = "HP:0000001", "HP:0000118"
FINGER, LONG_FINGERS, ARACHNODACTYLY = "HP:0000010", "HP:0000011", "HP:0000012"
EYE, ECTOPIA_LENTIS, MYOPIA = "HP:0000020", "HP:0000021", "HP:0000022"
HEART, AORTIC_ROOT_ANEURYSM = "HP:0000030", "HP:0000031"
SEIZURE = "HP:0000040"


def term(hpo_id: str, name: str, *parents: str) -> Term:
    return Term(hpo_id, name, parents)


TERMS = [
    term(ALL, "All"),
    term(ABNORMAL, "Phenotypic abnormality", ALL),
    term(FINGER, "Abnormal finger", ABNORMAL),
    term(LONG_FINGERS, "Long fingers", FINGER),
    term(ARACHNODACTYLY, "Arachnodactyly", LONG_FINGERS),
    term(EYE, "Abnormal eye", ABNORMAL),
    term(ECTOPIA_LENTIS, "Ectopia lentis", EYE),
    term(MYOPIA, "Myopia", EYE),
    term(HEART, "Abnormal heart", ABNORMAL),
    term(AORTIC_ROOT_ANEURYSM, "Aortic root aneurysm", HEART),
    term(SEIZURE, "Seizure", ABNORMAL),
]


def annotations(disease: str, *terms: tuple[str, float | None]) -> list[Annotation]:
    return [Annotation(disease, disease.split(":")[1], t, f, "", False) for t, f in terms]


ANNOTATIONS = [
    *annotations("OMIM:1", (ARACHNODACTYLY, 0.9), (ECTOPIA_LENTIS, 0.5), (AORTIC_ROOT_ANEURYSM, 0.9), (MYOPIA, None)),
    *annotations("OMIM:2", (LONG_FINGERS, None), (ECTOPIA_LENTIS, 0.9), (SEIZURE, 0.2)),
    *annotations("OMIM:3", (SEIZURE, 1.0)),
    *annotations("OMIM:4", (MYOPIA, 0.9)),
    *[Annotation("OMIM:4", "4", SEIZURE, None, "", True)],  # NOT: ignored
]


@pytest.fixture(scope="module")
def tiny():
    return build_index(build("test", TERMS, ANNOTATIONS))


def test_information_content_comes_from_annotation_counts(tiny):
    ic = tiny.onto.ic
    assert ic[ABNORMAL] == 0.0  # every disease
    assert ic[SEIZURE] == pytest.approx(math.log(4 / 2))
    assert ic[ARACHNODACTYLY] == pytest.approx(math.log(4))
    assert tiny.onto.diseases["OMIM:4"].phenotypes == {MYOPIA: 0.9}


def test_the_classic_presentation_ranks_its_disease_first(tiny):
    ranked = rank([ARACHNODACTYLY, ECTOPIA_LENTIS, AORTIC_ROOT_ANEURYSM], k=4, index=tiny)
    assert [r.disease_id for r in ranked] == ["OMIM:1", "OMIM:2", "OMIM:4", "OMIM:3"]
    best = ranked[0]
    assert {(m.patient_term, m.disease_term, m.relation) for m in best.matches} == {
        (ARACHNODACTYLY, ARACHNODACTYLY, "exact"),
        (ECTOPIA_LENTIS, ECTOPIA_LENTIS, "exact"),
        (AORTIC_ROOT_ANEURYSM, AORTIC_ROOT_ANEURYSM, "exact"),
    }


def test_ancestor_propagation_both_ways(tiny):
    [homocystinuria] = [r for r in rank([ARACHNODACTYLY], k=4, index=tiny) if r.disease_id == "OMIM:2"]
    [m] = homocystinuria.matches
    # The patient's specific term matches the disease's general one, with the general term's IC.
    assert (m.disease_term, m.common_ancestor, m.relation) == (LONG_FINGERS, LONG_FINGERS, "patient term more specific")
    assert m.patient_path == (ARACHNODACTYLY, LONG_FINGERS) and m.disease_path == (LONG_FINGERS,)

    [marfan] = [r for r in rank([LONG_FINGERS], k=4, index=tiny) if r.disease_id == "OMIM:1"]
    [m] = marfan.matches
    assert (m.disease_term, m.relation, m.disease_path) == (
        ARACHNODACTYLY,
        "patient term more general",
        (ARACHNODACTYLY, LONG_FINGERS),
    )

    # Siblings meet at their common parent.
    assert mica(tiny.onto, MYOPIA, ECTOPIA_LENTIS) == (EYE, tiny.onto.ic[EYE])


def test_vectorised_scores_equal_the_pairwise_formula(tiny):
    onto = tiny.onto
    patient = [ARACHNODACTYLY, MYOPIA, SEIZURE]
    forward, backward = patient_to_disease_all(tiny, patient), disease_to_patient_all(tiny, patient)
    for row, disease_id in enumerate(tiny.disease_ids):
        disease = onto.diseases[disease_id]
        pairs = [(p, d, mica(onto, p, d)[1], f) for p in patient for d, f in disease.phenotypes.items()]
        assert score_pairs(pairs) == pytest.approx((forward[row], backward[row]))


def test_unknown_and_obsolete_terms_are_ignored(tiny):
    assert rank(["HP:9999999"], index=tiny) == []
    assert shortest_path_up(tiny.onto, ARACHNODACTYLY, ALL) == (ARACHNODACTYLY, LONG_FINGERS, FINGER, ABNORMAL, ALL)


def test_marfan_syndrome_ranks_first_on_the_real_ontology():
    marfan = [
        "HP:0001166",
        "HP:0001083",
        "HP:0002616",
        "HP:0000767",
        "HP:0000098",
        "HP:0002650",
        "HP:0001653",
        "HP:0004942",
        "HP:0000545",
        "HP:0001382",
    ]
    ranked = rank(marfan, k=5, index=default_index())
    assert {r.disease_id for r in ranked[:2]} == {"OMIM:154700", "ORPHA:558"}
    assert all(r.name == "Marfan syndrome" for r in ranked[:2])
    assert ranked[0].score >= ranked[2].score
    assert len(ranked[0].matches) == len(marfan)
