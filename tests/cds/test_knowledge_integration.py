import asyncio

import pytest

from services.cds.knowledge.hpo import ontology
from services.cds.knowledge.loader import ICD10CM_SYSTEM, Scope, load, phenotypes_of
from services.cds.knowledge.reasoning import (
    default_index,
    disease_to_patient_all,
    paths_in_graph,
    patient_to_disease_all,
    rank,
    score_in_graph,
)
from services.common.graph import Graph

pytestmark = pytest.mark.integration

MARFAN = ["HP:0001166", "HP:0001083", "HP:0002616", "HP:0000767", "HP:0000098", "HP:0002650"]


def subset() -> frozenset[str]:
    """Marfan syndrome, a few look-alikes, and the first diseases by id: 50 in all."""
    onto = ontology()
    wanted = ["OMIM:154700", "ORPHA:558", "OMIM:129600", "OMIM:610168", "OMIM:121050"]
    rest = [d for d in sorted(onto.diseases) if d not in wanted][: 50 - len(wanted)]
    return frozenset(wanted + rest)


async def _with_graph(settings, fn):
    graph = Graph.connect(settings)
    try:
        return await fn(graph)
    finally:
        await graph.close()


COUNTS = """
MATCH (d:Disease) WHERE d.id IN $diseases
OPTIONAL MATCH (d)-[r:HAS_PHENOTYPE]->(:Phenotype)
WITH count(DISTINCT d) AS diseases, count(r) AS links
MATCH (p:Phenotype) WHERE p.hpo_id IN $phenotypes
OPTIONAL MATCH (p)-[i:IS_A]->(:Phenotype)
WITH diseases, links, count(DISTINCT p) AS phenotypes, count(i) AS is_a
MATCH (c:Condition {system: $system}) WHERE c.code STARTS WITH 'E11'
OPTIONAL MATCH (c)-[ci:IS_A]->(:Condition)
RETURN diseases, links, phenotypes, is_a, count(DISTINCT c) AS conditions, count(ci) AS condition_is_a
"""


def test_loading_twice_creates_no_duplicates(local_stack):
    onto = ontology()
    diseases = subset()
    scope = Scope(disease_ids=diseases, icd10cm_prefixes=("E11",), max_medications=50)
    phenotypes = sorted(phenotypes_of(onto, diseases))
    progress: list[tuple[str, int, int]] = []

    async def go(graph: Graph):
        first = await load(graph, scope, batch_size=500, progress=lambda *p: progress.append(p))
        counts = []
        for _ in range(2):
            records, _, _ = await graph.driver.execute_query(
                COUNTS, diseases=sorted(diseases), phenotypes=phenotypes, system=ICD10CM_SYSTEM
            )
            counts.append(dict(records[0]))
            second = await load(graph, scope, batch_size=500)
        return first, second, counts

    first, second, (after_first, after_second) = asyncio.run(_with_graph(local_stack, go))
    assert first.rows == second.rows and set(first.rows) == {"phenotypes", "diseases", "icd10cm", "medications"}
    assert after_first == after_second
    assert after_first["diseases"] == 50 and after_first["phenotypes"] == len(phenotypes)
    assert after_first["links"] == sum(len(onto.diseases[d].phenotypes) for d in diseases)
    assert after_first["is_a"] == sum(len(onto.terms[t].parents) for t in phenotypes)
    assert after_first["conditions"] > 50 and after_first["condition_is_a"] >= after_first["conditions"] - 1
    assert progress[-1][0] == "medications" and progress[-1][1] == progress[-1][2] == 50


def test_graph_scoring_and_paths_agree_with_memory(local_stack):
    diseases = sorted(subset())[:12]  # includes the Marfan entries and look-alikes (ids sort first)
    index = default_index()
    forward = patient_to_disease_all(index, MARFAN)
    backward = disease_to_patient_all(index, MARFAN)
    rows = {d: i for i, d in enumerate(index.disease_ids)}
    top = rank(MARFAN, k=1)[0]

    async def go(graph: Graph):
        await load(graph, Scope(disease_ids=subset(), icd10cm_kinds=(), medications=False))
        scores = {d: await score_in_graph(graph, d, MARFAN) for d in diseases}
        paths = [await paths_in_graph(graph, m) for m in top.matches] if top.disease_id in subset() else []
        return scores, paths

    scores, paths = asyncio.run(_with_graph(local_stack, go))
    for d in diseases:
        assert scores[d] == pytest.approx((forward[rows[d]], backward[rows[d]]), abs=1e-5), d
    by_graph = sorted(diseases, key=lambda d: (-round(scores[d][0], 4), -round(scores[d][1], 4), d))
    by_memory = sorted(diseases, key=lambda d: (-round(forward[rows[d]], 4), -round(backward[rows[d]], 4), d))
    assert by_graph == by_memory
    assert paths, "the top disease is in the loaded subset"
    for m, p in zip(top.matches, paths, strict=True):
        assert len(p["patient_path"]) == len(m.patient_path) and p["patient_path"][0] == m.patient_term
        assert len(p["disease_path"]) == len(m.disease_path) and p["disease_path"][-1] == m.common_ancestor
