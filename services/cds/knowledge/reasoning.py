"""Rank diseases for a patient's phenotypes by information-content similarity, with IS_A explanations.

The similarity of two HPO terms is the information content (IC) of their most informative common ancestor
(MICA, Resnik). For a disease:
- `patient_to_disease`: mean over the patient's terms of the best similarity to any of the disease's terms
  (the query -> disease score of Phenomizer, Köhler et al. 2009); this is the score and the first sort key;
- `disease_to_patient`: mean over the disease's terms, weighted by their annotated frequency (0.5 where
  none is stated), of the best similarity to any patient term; the second sort key, so among diseases that
  explain the patient equally well the one whose frequent features the patient shows comes first.

Ancestor propagation works both ways: a patient's specific term (Arachnodactyly) matches a disease's general
term (Long fingers) with the general term's IC, a general patient term (Long fingers) matches a specific
disease term (Arachnodactyly) with its own IC, and siblings match through their common ancestor.

In memory, `patient_to_disease` is computed for every disease at once (numpy) and `disease_to_patient` for
all of them too (numpy). `SCORE_PAIRS_QUERY` finds the same (patient term, disease term, MICA) pairs
over the loaded graph and `score_pairs` scores either, so both paths share one formula.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from services.cds.knowledge.hpo import Ontology, ontology
from services.common.graph import Graph

UNSTATED_FREQUENCY = 0.5  # weight of a disease phenotype whose frequency phenotype.hpoa does not state


def weight(frequency: float | None) -> float:
    return UNSTATED_FREQUENCY if frequency is None else frequency


@dataclass(frozen=True, slots=True)
class PhenotypeMatch:
    patient_term: str
    disease_term: str
    common_ancestor: str  # the MICA
    ic: float
    relation: str  # "exact", "patient term more specific", "patient term more general", "related"
    patient_path: tuple[str, ...]  # patient_term IS_A ... IS_A common_ancestor (shortest)
    disease_path: tuple[str, ...]  # disease_term IS_A ... IS_A common_ancestor (shortest)


@dataclass(frozen=True, slots=True)
class RankedDisease:
    disease_id: str
    name: str
    score: float  # = patient_to_disease
    patient_to_disease: float
    disease_to_patient: float
    matches: tuple[PhenotypeMatch, ...]  # one per patient term, best first


@dataclass(frozen=True)
class Index:
    """Arrays for scoring every disease at once; built once per ontology."""

    onto: Ontology
    disease_ids: tuple[str, ...]
    term_ids: tuple[str, ...]
    diseases_with: Mapping[str, np.ndarray]  # term -> rows of diseases annotated with it or a descendant
    descendants: Mapping[str, np.ndarray]  # term -> rows (in term_ids) of itself and its descendants
    annotation_terms: np.ndarray  # term rows of every disease's phenotypes, disease after disease
    annotation_weights: np.ndarray  # their frequency weights
    disease_starts: np.ndarray  # where each disease's phenotypes start in the two arrays above
    weight_sums: np.ndarray


def build_index(onto: Ontology) -> Index:
    disease_ids = tuple(sorted(onto.diseases))
    term_ids = tuple(sorted(onto.terms))
    term_row = {t: i for i, t in enumerate(term_ids)}
    diseases_with: dict[str, list[int]] = {}
    terms: list[int] = []
    weights: list[float] = []
    starts: list[int] = []
    for row, disease_id in enumerate(disease_ids):
        phenotypes = onto.diseases[disease_id].phenotypes
        for hpo_id in frozenset().union(*(onto.ancestors[t] for t in phenotypes)):
            diseases_with.setdefault(hpo_id, []).append(row)
        starts.append(len(terms))
        for hpo_id, frequency in sorted(phenotypes.items()):
            terms.append(term_row[hpo_id])
            weights.append(weight(frequency))
    descendants: dict[str, list[int]] = {}
    for hpo_id, ancestors in onto.ancestors.items():
        for ancestor in ancestors:
            descendants.setdefault(ancestor, []).append(term_row[hpo_id])
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(starts, dtype=np.int64)
    return Index(
        onto,
        disease_ids,
        term_ids,
        {t: np.asarray(r, dtype=np.int32) for t, r in diseases_with.items()},
        {t: np.asarray(r, dtype=np.int32) for t, r in descendants.items()},
        np.asarray(terms, dtype=np.int32),
        w,
        s,
        np.add.reduceat(w, s),
    )


@cache
def default_index() -> Index:
    """Index over the installed HPO release (~3 s once per process)."""
    return build_index(ontology())


def patient_terms(onto: Ontology, hpo_ids: Iterable[str]) -> list[str]:
    """Current ids of the known terms, without duplicates, in the order given."""
    out: list[str] = []
    for hpo_id in hpo_ids:
        resolved = onto.resolve(hpo_id)
        if resolved is not None and resolved not in out:
            out.append(resolved)
    return out


def patient_to_disease_all(index: Index, terms: Sequence[str]) -> np.ndarray:
    """For every disease, the mean over `terms` of the IC of the best common ancestor with the disease's terms."""
    ic = index.onto.ic
    total = np.zeros(len(index.disease_ids), dtype=np.float64)
    for term in terms:
        best = np.zeros(len(index.disease_ids), dtype=np.float64)
        # Ascending IC: a more informative ancestor overwrites a less informative one.
        for ancestor in sorted(index.onto.ancestors[term], key=lambda a: (ic[a], a)):
            rows = index.diseases_with.get(ancestor)
            if rows is not None and ic[ancestor] > 0:
                best[rows] = ic[ancestor]
        total += best
    return total / max(len(terms), 1)


def disease_to_patient_all(index: Index, terms: Sequence[str]) -> np.ndarray:
    """For every disease, the frequency-weighted mean over its terms of the best IC shared with any patient term."""
    ic = index.onto.ic
    best = np.zeros(len(index.term_ids), dtype=np.float64)  # per term: best IC shared with the patient
    closure = frozenset().union(*(index.onto.ancestors[t] for t in terms))
    for ancestor in sorted(closure, key=lambda a: (ic[a], a)):
        if ic[ancestor] > 0:
            best[index.descendants[ancestor]] = ic[ancestor]
    weighted = best[index.annotation_terms] * index.annotation_weights
    sums = np.add.reduceat(weighted, index.disease_starts)
    # A disease whose every phenotype is annotated "Excluded" (frequency 0) has no weight: it scores 0.
    result: np.ndarray = np.divide(sums, index.weight_sums, out=np.zeros_like(sums), where=index.weight_sums > 0)
    return result


def mica(onto: Ontology, a: str, b: str) -> tuple[str, float]:
    """The most informative common ancestor of two terms and its IC (ties broken by the larger id)."""
    best = max(onto.ancestors[a] & onto.ancestors[b], key=lambda t: (onto.ic[t], t))
    return best, onto.ic[best]


def score_pairs(pairs: Iterable[tuple[str, str, float, float | None]]) -> tuple[float, float]:
    """(patient -> disease, disease -> patient) from (patient term, disease term, MICA IC, frequency) of all pairs."""
    by_patient: dict[str, float] = {}
    by_disease: dict[str, tuple[float, float]] = {}
    for p, d, ic, frequency in pairs:
        by_patient[p] = max(by_patient.get(p, 0.0), ic)
        by_disease[d] = (max(by_disease.get(d, (0.0, 0.0))[0], ic), weight(frequency))
    if not by_patient:
        return 0.0, 0.0
    forward = sum(by_patient.values()) / len(by_patient)
    total_weight = sum(w for _, w in by_disease.values())
    backward = sum(ic * w for ic, w in by_disease.values()) / total_weight if total_weight else 0.0
    return forward, backward


def shortest_path_up(onto: Ontology, start: str, goal: str) -> tuple[str, ...]:
    """Shortest IS_A chain from `start` up to its ancestor `goal` (breadth first, parents in id order)."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        term = queue.popleft()
        if term == goal:
            path = [term]
            while (before := previous[path[-1]]) is not None:
                path.append(before)
            return tuple(reversed(path))
        for parent in sorted(onto.terms[term].parents):
            if parent not in previous and goal in onto.ancestors.get(parent, ()):
                previous[parent] = term
                queue.append(parent)
    raise ValueError(f"{goal} is not an ancestor of {start}")


def _relation(patient: str, disease: str, common: str) -> str:
    if patient == disease:
        return "exact"
    if common == disease:
        return "patient term more specific"
    if common == patient:
        return "patient term more general"
    return "related"


def explain(onto: Ontology, disease_id: str, terms: Sequence[str]) -> tuple[PhenotypeMatch, ...]:
    """For each patient term, its best disease term, their MICA and the IS_A paths to it; best first."""
    phenotypes = sorted(onto.diseases[disease_id].phenotypes)
    closure = frozenset().union(*(onto.ancestors[d] for d in phenotypes))
    matches = []
    for p in terms:
        common = max(onto.ancestors[p] & closure, key=lambda t: (onto.ic[t], t))
        # The disease term nearest below the MICA explains the match most directly.
        paths = [shortest_path_up(onto, d, common) for d in phenotypes if common in onto.ancestors[d]]
        disease_path = min(paths, key=lambda path: (len(path), path[0]))
        d = disease_path[0]
        matches.append(
            PhenotypeMatch(
                p,
                d,
                common,
                onto.ic[common],
                _relation(p, d, common),
                shortest_path_up(onto, p, common),
                disease_path,
            )
        )
    return tuple(sorted(matches, key=lambda m: (-m.ic, m.patient_term)))


def rank(hpo_ids: Iterable[str], k: int = 10, index: Index | None = None) -> list[RankedDisease]:
    """Top `k` diseases for the patient's phenotypes (present ones only: filter negated / family first)."""
    idx = index if index is not None else default_index()
    terms = patient_terms(idx.onto, hpo_ids)
    if not terms:
        return []
    forward = np.round(patient_to_disease_all(idx, terms), 9)
    backward = np.round(disease_to_patient_all(idx, terms), 9)
    # Rounded so that equal sums added in another order (Cypher) do not reorder ties; ids break the rest.
    order = np.lexsort((np.arange(len(idx.disease_ids)), -backward, -forward))[:k]
    return [
        RankedDisease(
            idx.disease_ids[row],
            idx.onto.diseases[idx.disease_ids[row]].name,
            float(forward[row]),
            float(forward[row]),
            float(backward[row]),
            explain(idx.onto, idx.disease_ids[row], terms),
        )
        for row in order
    ]


# -- The same over the loaded graph ------------------------------------------------------------------------------

# Every (patient term, disease term) pair of one disease with their MICA: rows for `score_pairs`.
SCORE_PAIRS_QUERY = """
MATCH (p:Phenotype) WHERE p.hpo_id IN $patient
MATCH (p)-[:IS_A*0..]->(pa:Phenotype)
WITH p, collect(DISTINCT pa) AS p_anc
WITH collect({term: p, anc: p_anc}) AS patient
MATCH (:Disease {id: $disease})-[:HAS_PHENOTYPE]->(dt:Phenotype)
MATCH (dt)-[:IS_A*0..]->(da:Phenotype)
WITH patient, dt, collect(DISTINCT da) AS d_anc
UNWIND patient AS pt
UNWIND [a IN pt.anc WHERE a IN d_anc] AS common
WITH pt.term AS p, dt, common ORDER BY common.ic DESC, common.hpo_id DESC
WITH p, dt, collect(common)[0] AS best
MATCH (:Disease {id: $disease})-[r:HAS_PHENOTYPE]->(dt)
RETURN p.hpo_id AS patient_term, dt.hpo_id AS disease_term, best.hpo_id AS common_ancestor, best.ic AS ic,
       r.frequency AS frequency
"""

# The shortest IS_A paths from a patient term and a disease term up to their common ancestor.
PATH_QUERY = """
MATCH (p:Phenotype {hpo_id: $patient_term}), (d:Phenotype {hpo_id: $disease_term}),
      (a:Phenotype {hpo_id: $common_ancestor})
MATCH pp = shortestPath((p)-[:IS_A*0..]->(a))
MATCH dp = shortestPath((d)-[:IS_A*0..]->(a))
RETURN [n IN nodes(pp) | n.hpo_id] AS patient_path, [n IN nodes(dp) | n.hpo_id] AS disease_path
"""


async def score_in_graph(graph: Graph, disease_id: str, hpo_ids: Sequence[str]) -> tuple[float, float]:
    """`score_pairs` over the pairs SCORE_PAIRS_QUERY finds in Neo4j for one disease."""
    records, _, _ = await graph.driver.execute_query(
        SCORE_PAIRS_QUERY, patient=list(hpo_ids), disease=disease_id, database_=graph.database
    )
    return score_pairs((r["patient_term"], r["disease_term"], float(r["ic"]), r["frequency"]) for r in records)


async def paths_in_graph(graph: Graph, match: PhenotypeMatch) -> dict[str, Any]:
    """PATH_QUERY for one explained match: {"patient_path": [...], "disease_path": [...]}."""
    records, _, _ = await graph.driver.execute_query(
        PATH_QUERY,
        patient_term=match.patient_term,
        disease_term=match.disease_term,
        common_ancestor=match.common_ancestor,
        database_=graph.database,
    )
    return dict(records[0]) if records else {}
