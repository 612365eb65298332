"""Synthetic patients for the differential-diagnosis model: a templated clinical note and a LOINC lab panel each.

Demographics and core labs come from carebundle FHIR R4 bundles (its `healthy` profile as background for
diagnoses it has no profile for); disease-specific labs, ordering habits and notes are invented (`diseases.py`),
rare-disease presentations come from HPO annotations (`hpo.py`). Deterministic for a given `CohortSpec`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np

from services.cds.labs import LAB_KEYS, ckd_epi_2021, observations_to_values, panel
from training.cds.diseases import BASELINE_LABS, BASELINE_ORDERS, DISEASES, NOISE_PHENOTYPES, Disease
from training.cds.hpo import HpoProfile, load_profiles

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medstream" / "cds"
GENERATOR_VERSION = 2  # bump when generation changes, so caches keyed on the spec are not reused
REFERENCE_DATE = date(2026, 1, 1)  # carebundle's default reference date: ages are counted to it
DECIMALS = {"creatinine": 2, "tsh": 2, "potassium": 1, "haemoglobin": 1, "hba1c": 1, "urate": 1, "wbc": 1}

Mentions = tuple[str, ...]  # one phenotype's name and synonyms


@dataclass(frozen=True)
class CohortSpec:
    n_patients: int = 5000
    seed: int = 11

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": GENERATOR_VERSION, "diseases": [d.key for d in DISEASES]})
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cohort:
    labels: tuple[str, ...]  # class index -> disease key
    y: np.ndarray  # int64 [n]
    notes: tuple[str, ...]
    labs: np.ndarray  # float32 [n, len(LAB_KEYS)], raw units, NaN = not ordered
    key: str


def presentation(disease: Disease, profiles: dict[int, HpoProfile]) -> list[tuple[Mentions, float]]:
    """A disease's phenotypes as (mentions, frequency)."""
    if disease.omim is not None:
        return [(tuple(dict.fromkeys(p.mentions())), p.frequency) for p in profiles[disease.omim].phenotypes]
    return [(tuple(text.split("|")), freq) for text, freq in disease.phenotypes]


def _mention(rng: np.random.Generator, mentions: Mentions) -> str:
    text = mentions[int(rng.integers(len(mentions)))]
    return text if text[:2].isupper() else text[:1].lower() + text[1:]  # keep acronyms ("BMI", "MTP")


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sample_phenotypes(rng: np.random.Generator, phenotypes: list[tuple[Mentions, float]]) -> list[Mentions]:
    """Present phenotypes, each with its frequency, capped at 2-5 mentions (frequency-weighted), at least one."""
    present = [m for m, f in phenotypes if rng.random() < f]
    cap = int(rng.integers(2, 6))
    weights = np.array([f for _, f in phenotypes], dtype=float) + 1e-3
    if not present:
        present = [phenotypes[int(rng.choice(len(phenotypes), p=weights / weights.sum()))][0]]
    if len(present) > cap:
        present = [present[i] for i in sorted(rng.choice(len(present), size=cap, replace=False))]
    return present


OPENINGS = (
    "{age}-year-old {sex} presenting with {items}.",
    "{Sex}, {age}, seen in clinic with {items}.",
    "{age}{s} referred for assessment of {items}.",
    "Patient is a {age} year old {sex} complaining of {items}.",
)
FOLLOW_UPS = (
    "Also reports {items}.",
    "Further history: {items}.",
    "On examination: {items}.",
    "Additionally notes {items}.",
)
NEGATIONS = ("Denies {items}.", "No {items}.", "Negative for {items}.", "There is no history of {items}.")
FAMILY = (
    "Family history of {name}.",
    "{Poss} {relative} has {name}.",
    "{Poss} {relative} was diagnosed with {name}.",
    "FHx: {name} in {relative}.",
)
EPONYMS = ("Marfan", "Fabry", "Wilson", "Gaucher", "Ehlers-Danlos", "Alport")
RELATIVES = ("mother", "father", "brother", "sister", "maternal uncle", "paternal aunt", "cousin")


def render_note(
    rng: np.random.Generator,
    disease: Disease,
    presentations: dict[str, list[tuple[Mentions, float]]],
    age: int,
    female: bool,
) -> str:
    """A short free-text note: complaints, noise, negated mentions of other diseases' signs, family history."""
    own = [_mention(rng, m) for m in sample_phenotypes(rng, presentations[disease.key])]
    others = [d for d in DISEASES if d.key != disease.key]
    noise = [str(x) for x in rng.choice(NOISE_PHENOTYPES, size=int(rng.integers(0, 3)), replace=False)]
    if rng.random() < 0.15:  # a comorbid complaint from another diagnosis
        other = others[int(rng.integers(len(others)))]
        noise.append(_mention(rng, sample_phenotypes(rng, presentations[other.key])[0]))
    findings = own + noise
    order = rng.permutation(len(findings))
    findings = [findings[i] for i in order]
    split = int(rng.integers(1, min(2, len(findings)) + 1))
    sex, s = ("woman", "F") if female else ("man", "M")
    template = OPENINGS[int(rng.integers(len(OPENINGS)))]
    sentences = [template.format(age=age, sex=sex, Sex=sex.capitalize(), s=s, items=_join(findings[:split]))]
    rest = findings[split:]
    while rest:
        take = int(rng.integers(1, 3))
        sentences.append(FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))].format(items=_join(rest[:take])))
        rest = rest[take:]
    if rng.random() < 0.6:  # pertinent negatives: the differential's signs, which this patient lacks
        negated: list[str] = []
        for _ in range(int(rng.integers(1, 4))):
            other = others[int(rng.integers(len(others)))]
            phenotypes = presentations[other.key]
            top = sorted(phenotypes, key=lambda p: -p[1])[:5]
            mention = _mention(rng, top[int(rng.integers(len(top)))][0])
            if mention not in own and mention not in negated:
                negated.append(mention)
        if negated:
            sentences.append(NEGATIONS[int(rng.integers(len(NEGATIONS)))].format(items=_join(negated)))
    family: Disease | None = None
    if rng.random() < (0.35 if disease.rare else 0.15):
        family = disease
    elif rng.random() < 0.12:  # family history that is not this patient's diagnosis
        family = others[int(rng.integers(len(others)))]
    if family is not None:
        template = FAMILY[int(rng.integers(len(FAMILY)))]
        relative = RELATIVES[int(rng.integers(len(RELATIVES)))]
        name = family.name if family.name.startswith(EPONYMS) else family.name[:1].lower() + family.name[1:]
        sentences.append(template.format(name=name, relative=relative, Poss="Her" if female else "His"))
    return " ".join(sentences)


def _round(key: str, value: float) -> float:
    return round(value, DECIMALS.get(key, 0 if value >= 20 else 1))


def sample_labs(
    rng: np.random.Generator, disease: Disease, background: dict[str, float], age: int, female: bool
) -> dict[str, float]:
    """The ordered labs: carebundle background, baseline for what it lacks, disease overrides, then ordering."""
    values = dict(background)
    for key, dist in BASELINE_LABS.items():
        values.setdefault(key, dist.sample(rng))
    for key, dist in disease.labs.items():
        values[key] = dist.sample(rng)
    values = {k: max(v, 0.01) for k, v in values.items()}
    if "creatinine" in values and ("creatinine" in disease.labs or "egfr" not in values):
        values["egfr"] = ckd_epi_2021(values["creatinine"], age, female)
    values["transferrin_saturation"] = min(values["transferrin_saturation"], 100.0)
    ordered = {k for k in LAB_KEYS if rng.random() < disease.orders.get(k, BASELINE_ORDERS[k])}
    ordered.discard("egfr")
    if "creatinine" in ordered:
        ordered.add("egfr")  # reported with every creatinine
    return {k: _round(k, values[k]) for k in LAB_KEYS if k in ordered and k in values}


def _counts(n: int) -> list[int]:
    weights = np.array([d.weight for d in DISEASES])
    counts = np.floor(weights / weights.sum() * n).astype(int)
    counts[np.argsort(-weights)[: n - counts.sum()]] += 1  # largest classes take the remainder
    return [int(c) for c in counts]


def _carebundle_patient(disease: Disease, seed: int, index: int, female: bool) -> tuple[int, dict[str, float]]:
    from carebundle import generate_bundle

    bundle = generate_bundle(
        profile=disease.carebundle_profile,
        seed=seed,
        index=index,
        sex="F" if female else "M",
        age_range=disease.age,
        include_vitals=False,
    )
    resources = [
        e.resource if isinstance(e.resource, dict) else e.resource.model_dump()
        for e in bundle.entry or []
        if e.resource is not None
    ]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    age = int((REFERENCE_DATE - date.fromisoformat(patient["birthDate"])).days // 365.25)
    return age, observations_to_values(resources)


def build(spec: CohortSpec) -> Cohort:
    """Generate the cohort (about 8 ms a patient, most of it carebundle)."""
    profiles = load_profiles([d.omim for d in DISEASES if d.omim is not None])
    presentations = {d.key: presentation(d, profiles) for d in DISEASES}
    diagnoses = np.repeat(np.arange(len(DISEASES)), _counts(spec.n_patients))
    diagnoses = diagnoses[np.random.default_rng(spec.seed).permutation(len(diagnoses))]
    notes, rows = [], []
    for index, label in enumerate(diagnoses):
        disease = DISEASES[int(label)]
        rng = np.random.default_rng([spec.seed, index])
        female = bool(rng.random() < (0.75 if disease.key == "iron_deficiency_anaemia" else 0.5))
        age, background = _carebundle_patient(disease, spec.seed, index, female)
        rows.append(panel(sample_labs(rng, disease, background, age, female)))
        notes.append(render_note(rng, disease, presentations, age, female))
    return Cohort(
        tuple(d.key for d in DISEASES),
        diagnoses.astype(np.int64),
        tuple(notes),
        np.array(rows, dtype=np.float32).reshape(len(rows), len(LAB_KEYS)),
        spec.key(),
    )


def generate(spec: CohortSpec, cache_dir: Path = DEFAULT_CACHE) -> Cohort:
    """The cohort from `cache_dir/cohort-<key>.npz`, built and cached on a miss."""
    path = cache_dir / f"cohort-{spec.key()}.npz"
    if path.exists():
        data = np.load(path, allow_pickle=False)
        return Cohort(
            tuple(str(x) for x in data["labels"]),
            data["y"],
            tuple(str(x) for x in data["notes"]),
            data["labs"],
            spec.key(),
        )
    cohort = build(spec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, labels=np.array(cohort.labels), y=cohort.y, notes=np.array(cohort.notes), labs=cohort.labs)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache behind
    return cohort
