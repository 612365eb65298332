import pytest

from services.cds.knowledge.phenotypes import default_matcher, extract_phenotypes

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def matcher():
    return default_matcher()


def flags(matcher, note: str, text: str) -> tuple[str, bool, bool, bool]:
    [m] = [m for m in extract_phenotypes(note, matcher) if m.text.lower() == text.lower()]
    assert note[m.start : m.end] == m.text
    return m.hpo_id, m.negated, m.family, m.hedged


# (note, mention, hpo_id, negated, family, hedged)
CASES = [
    ("Patient denies fever, chills, or night sweats.", "night sweats", "HP:0030166", True, False, False),
    ("Patient denies fever, chills, or night sweats.", "fever", "HP:0001945", True, False, False),
    ("No seizures. Has scoliosis and arachnodactyly.", "seizures", "HP:0001250", True, False, False),
    ("No seizures. Has scoliosis and arachnodactyly.", "scoliosis", "HP:0002650", False, False, False),
    (
        "Mother has diabetes mellitus but patient has hypertension.",
        "diabetes mellitus",
        "HP:0000819",
        False,
        True,
        False,
    ),
    ("Mother has diabetes mellitus but patient has hypertension.", "hypertension", "HP:0000822", False, False, False),
    (
        "Family history: father with aortic root aneurysm.\n\nExam: tall stature.",
        "aortic root aneurysm",
        "HP:0002616",
        False,
        True,
        False,
    ),
    (
        "Family history: father with aortic root aneurysm.\n\nExam: tall stature.",
        "tall stature",
        "HP:0000098",
        False,
        False,
        False,
    ),
    ("FHx: hypertension in both parents.", "hypertension", "HP:0000822", False, True, False),
    ("There is no increase in proteinuria.", "proteinuria", "HP:0000093", False, False, False),
    ("Mother reports that he has had seizures since age 2.", "seizures", "HP:0001250", False, False, False),
    ("Possible ectopia lentis on slit lamp.", "ectopia lentis", "HP:0001083", False, False, True),
    ("Pneumonia was ruled out. Anemia noted.", "pneumonia", "HP:0002090", True, False, False),
    ("Pneumonia was ruled out. Anemia noted.", "anemia", "HP:0001903", False, False, False),
    ("Negative for hematuria and proteinuria", "proteinuria", "HP:0000093", True, False, False),
    ("No evidence of hepatomegaly or splenomegaly; mild hypotonia.", "splenomegaly", "HP:0001744", True, False, False),
    ("No evidence of hepatomegaly or splenomegaly; mild hypotonia.", "hypotonia", "HP:0001252", False, False, False),
    ("Seizures in his mother, none in the patient.", "seizures", "HP:0001250", False, True, False),
    ("Walks without difficulty; he has a cough.", "cough", "HP:0012735", False, False, False),
    ("She has long slender fingers.", "long slender fingers", "HP:0001166", False, False, False),
    ("Absence of hepatomegaly, but splenomegaly is present.", "splenomegaly", "HP:0001744", False, False, False),
    ("No family history of hypertension.", "hypertension", "HP:0000822", True, True, False),
    (
        "Concern for VSD; rule out pulmonary arterial hypertension.",
        "pulmonary arterial hypertension",
        "HP:0002092",
        False,
        False,
        True,
    ),
    ("Concern for VSD; rule out pulmonary arterial hypertension.", "VSD", "HP:0001629", False, False, True),
]


@pytest.mark.parametrize("note, text, hpo_id, negated, family, hedged", CASES)
def test_context_of_mentions(matcher, note, text, hpo_id, negated, family, hedged):
    assert flags(matcher, note, text) == (hpo_id, negated, family, hedged)


def test_longest_match_wins(matcher):
    [m] = extract_phenotypes("Echo showed an aortic root aneurysm.", matcher)
    assert (m.hpo_id, m.text) == ("HP:0002616", "aortic root aneurysm")


def test_abbreviations_match_only_in_capitals(matcher):
    assert [m.hpo_id for m in extract_phenotypes("History of VSD repair; AKI on day 3.", matcher)] == [
        "HP:0001629",
        "HP:0001919",
    ]
    assert extract_phenotypes("the aki vsd", matcher) == []


def test_a_phrase_does_not_run_across_sentences(matcher):
    mentions = extract_phenotypes("Aortic root. Aneurysm of the calf.", matcher)
    assert "HP:0002616" not in {m.hpo_id for m in mentions}


def test_present_means_asserted_for_the_patient(matcher):
    mentions = extract_phenotypes("Scoliosis. No myopia. Mother has ptosis. Possible hypotonia.", matcher)
    assert [m.hpo_id for m in mentions if m.present] == ["HP:0002650"]


def test_empty_and_unmatched_text(matcher):
    assert extract_phenotypes("", matcher) == []
    assert extract_phenotypes("Seen in clinic today, plan follow up.", matcher) == []
