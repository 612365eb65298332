"""Decision-support evaluation: one patient state in, ranked differential diagnoses with explanations out.

For a batch of cases (the faust worker's batch, or one CDS Hooks request):
1. phenotypes: HPO terms from the recent notes (negated and family-history mentions dropped) and from abnormal
   labs and vital signs;
2. the multimodal model on Triton (`cds_multimodal`): note embedding + lab panel -> class probabilities, with
   integrated-gradients attributions of the labs for the top class computed by the served model version, and
   (optionally) leave-one-sentence-out contributions of the note, one more Triton call for the whole batch;
3. graph reasoning: every HPO disease scored by Resnik similarity to the patient's phenotypes, normalised by
   the patient's own information content (1.0 = every phenotype annotated exactly on the disease);
4. fusion: `alpha * p_model + (1 - alpha) * graph` for model classes that are HPO diseases, `p_model` for the
   others (the graph knows nothing of them), `(1 - alpha) * graph` for graph-only candidates.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from services.cds.contract import CDS_MULTIMODAL, CLASSES
from services.cds.explanation import Contribution, sentences
from services.cds.knowledge import reasoning
from services.cds.knowledge.phenotypes import Matcher, default_matcher, extract_phenotypes
from services.cds.labs import PANEL
from services.cds.state import PatientState
from services.common.triton import TritonClient

MAX_SENTENCES = 16  # occlusion cost grows with the note; beyond this the note's tail is not explained
OCCLUSION_BATCH = 128  # rows per request, below the model's max_batch_size

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True, slots=True)
class Evidence:
    hpo_id: str
    name: str
    source: str  # "note", "lab" or "vital"
    detail: str  # the mention, or "haemoglobin 9.1 g/dL (low)"


@dataclass(frozen=True, slots=True)
class Case:
    patient_id: str
    note: str
    labs: dict[str, float]  # analyte key -> value in the panel's UCUM unit
    evidence: tuple[Evidence, ...]
    fingerprint: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # what the state held: labs, vitals, notes, ...

    @property
    def hpo_ids(self) -> list[str]:
        return list(dict.fromkeys(e.hpo_id for e in self.evidence))


@dataclass(frozen=True, slots=True)
class Diagnosis:
    key: str  # model class key, or the HPO disease id for graph-only candidates
    name: str
    score: float  # fused
    model_probability: float | None  # None: not one of the model's classes
    graph_score: float | None  # None: not an HPO disease
    disease_id: str | None  # "OMIM:154700" where the graph knows the disease
    rare: bool
    matches: tuple[reasoning.PhenotypeMatch, ...] = ()  # graph explanation, best first


@dataclass(frozen=True)
class Assessment:
    case: Case
    model_name: str
    model_version: str
    candidates: tuple[Diagnosis, ...]  # best first
    top_class: str
    lab_contributions: tuple[Contribution, ...]  # toward the model's top class, largest |value| first
    sentence_contributions: tuple[Contribution, ...]
    no_labs_probability: float
    ontology_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)


def case_from_state(state: PatientState, matcher: Matcher | None = None) -> Case:
    """The evaluation input of a patient: note, lab panel values and present phenotypes with their source."""
    matcher = matcher or default_matcher()
    note = state.note_text()
    onto = reasoning.default_index().onto
    evidence: list[Evidence] = []
    for mention in extract_phenotypes(note, matcher):
        if mention.present:
            evidence.append(Evidence(mention.hpo_id, onto.terms[mention.hpo_id].name, "note", mention.text))
    for hpo_id, why in state.phenotypes_from_measurements():
        if hpo_id in onto.terms:
            source = "vital" if why.split(" ", 1)[0] in {v.key for v in state.vitals.values()} else "lab"
            evidence.append(Evidence(hpo_id, onto.terms[hpo_id].name, source, why))
    counts = {
        "labs": len(state.labs),
        "vitals": len(state.vitals),
        "notes": len(state.notes),
        "conditions": len(state.conditions),
        "medications": len(state.medications),
    }
    return Case(state.patient_id, note, state.lab_values(), tuple(evidence), state.fingerprint(), counts)


def graph_scores(index: reasoning.Index, terms: Sequence[str]) -> np.ndarray:
    """Similarity of every disease in `index` to the patient's terms, 0..1 (see the module docstring)."""
    if not terms:
        return np.zeros(len(index.disease_ids))
    self_ic = sum(index.onto.ic[t] for t in terms) / len(terms)
    forward = reasoning.patient_to_disease_all(index, terms)
    return np.clip(forward / self_ic, 0.0, 1.0) if self_ic > 0 else np.zeros_like(forward)


def fuse(
    probs: np.ndarray,
    terms: Sequence[str],
    index: reasoning.Index,
    *,
    alpha: float,
    top: int,
    graph_only: int = 3,
) -> list[Diagnosis]:
    """Model classes and the best graph-only diseases, by fused score (pure apart from the cached index)."""
    scores = graph_scores(index, terms)
    row = {d: i for i, d in enumerate(index.disease_ids)}
    candidates: list[Diagnosis] = []
    for label, p in zip(CLASSES, probs, strict=True):
        g = float(scores[row[label.disease_id]]) if terms and label.disease_id in row else None
        fused = float(p) if g is None else alpha * float(p) + (1 - alpha) * g
        disease_id = label.disease_id if label.disease_id in row else None
        candidates.append(Diagnosis(label.key, label.name, fused, float(p), g, disease_id, label.rare))
    known = {c.disease_id for c in candidates}
    if terms:
        order = np.argsort(-scores, kind="stable")
        extra = [i for i in order[: graph_only + len(known)] if index.disease_ids[i] not in known][:graph_only]
        for i in extra:
            disease = index.onto.diseases[index.disease_ids[i]]
            candidates.append(
                Diagnosis(
                    disease.id, disease.name, (1 - alpha) * float(scores[i]), None, float(scores[i]), disease.id, True
                )
            )
    best = sorted(candidates, key=lambda c: (-c.score, c.key))[:top]
    return [c if c.disease_id is None or not terms else _with_matches(c, index, terms) for c in best]


def _with_matches(candidate: Diagnosis, index: reasoning.Index, terms: Sequence[str]) -> Diagnosis:
    return replace(candidate, matches=reasoning.explain(index.onto, candidate.disease_id or "", terms))


class Engine:
    """Evaluates batches of cases against Triton; the same object serves the worker and the CDS Hooks service."""

    def __init__(
        self,
        triton: TritonClient,
        embed: Embed,
        *,
        alpha: float = 0.7,
        top: int = 3,
        explain_sentences: bool = True,
        index: reasoning.Index | None = None,
        matcher: Matcher | None = None,
    ) -> None:
        self.triton = triton
        self.embed = embed
        self.alpha = alpha
        self.top = top
        self.explain_sentences = explain_sentences
        self._index = index
        self._matcher = matcher
        self._names: dict[str, str] | None = None

    @property
    def index(self) -> reasoning.Index:
        if self._index is None:
            self._index = reasoning.default_index()
        return self._index

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            self._matcher = default_matcher()
        return self._matcher

    @property
    def term_names(self) -> Mapping[str, str]:
        """HPO id -> term name, for explanations."""
        if self._names is None:
            self._names = {t: term.name for t, term in self.index.onto.terms.items()}
        return self._names

    def warm_up(self) -> None:
        """Build the HPO index and note matcher and load the sentence model (seconds) before serving."""
        _ = self.index, self.matcher
        self.embed(["warm up"])

    def case(self, state: PatientState) -> Case:
        return case_from_state(state, self.matcher)

    async def evaluate(self, cases: Sequence[Case]) -> list[Assessment]:
        if not cases:
            return []
        timings: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        t0 = loop.time()
        embeddings = await asyncio.to_thread(self.embed, [c.note for c in cases])
        labs = np.array([[c.labs.get(lab.key, math.nan) for lab in PANEL] for c in cases], dtype=np.float32)
        t1 = loop.time()
        inputs = {"NOTE_EMBEDDING": embeddings.astype(np.float32), "LABS": labs}
        out, version = await self.triton.infer_contract(CDS_MULTIMODAL, inputs)
        t2 = loop.time()
        probs, attributions = out["PROBS"], out["LAB_ATTRIBUTIONS"]
        top_rows = probs.argmax(axis=1)
        occlusion = await self._sentence_contributions(cases, embeddings, labs, probs, top_rows, version)
        t3 = loop.time()
        fused = await asyncio.to_thread(
            lambda: [
                fuse(p, c.hpo_ids, self.index, alpha=self.alpha, top=self.top)
                for c, p in zip(cases, probs, strict=True)
            ]
        )
        t4 = loop.time()
        timings = {"embed": t1 - t0, "model": t2 - t1, "occlusion": t3 - t2, "graph": t4 - t3}
        results = []
        for i, case in enumerate(cases):
            lab_items = sorted(
                (
                    Contribution(lab.key, float(labs[i, j]), float(attributions[i, j]))
                    for j, lab in enumerate(PANEL)
                    if not math.isnan(labs[i, j])
                ),
                key=lambda c: -abs(c.contribution),
            )[:5]
            results.append(
                Assessment(
                    case=case,
                    model_name=CDS_MULTIMODAL.name,
                    model_version=version,
                    candidates=tuple(fused[i]),
                    top_class=CLASSES[int(top_rows[i])].key,
                    lab_contributions=tuple(lab_items),
                    sentence_contributions=tuple(occlusion[i]),
                    no_labs_probability=float(out["NO_LABS_PROBABILITY"][i, 0]),
                    ontology_version=self.index.onto.version,
                    timings_ms={k: round(v * 1000 / len(cases), 3) for k, v in timings.items()},
                )
            )
        return results

    async def _sentence_contributions(
        self,
        cases: Sequence[Case],
        embeddings: np.ndarray,
        labs: np.ndarray,
        probs: np.ndarray,
        top_rows: np.ndarray,
        version: str,
    ) -> list[list[Contribution]]:
        """Leave-one-sentence-out: p(top | note) - p(top | note without the sentence), same model version."""
        out: list[list[Contribution]] = [[] for _ in cases]
        if not self.explain_sentences:
            return out
        rows: list[tuple[int, str]] = []
        variants: list[str] = []
        for i, case in enumerate(cases):
            parts = sentences(case.note)[:MAX_SENTENCES]
            if len(parts) < 2:
                continue
            for j, part in enumerate(parts):
                rows.append((i, part))
                variants.append(" ".join(parts[:j] + parts[j + 1 :]))
        if not variants:
            return out
        occluded = (await asyncio.to_thread(self.embed, variants)).astype(np.float32)
        lab_rows = labs[[i for i, _ in rows]]
        chunks = [
            self.triton.infer(
                CDS_MULTIMODAL.name,
                {"NOTE_EMBEDDING": occluded[k : k + OCCLUSION_BATCH], "LABS": lab_rows[k : k + OCCLUSION_BATCH]},
                ["PROBS"],
                version=version,
            )
            for k in range(0, len(variants), OCCLUSION_BATCH)
        ]
        p_without = np.concatenate([r.outputs["PROBS"] for r in await asyncio.gather(*chunks)])
        for (i, part), p in zip(rows, p_without, strict=True):
            cls = int(top_rows[i])
            out[i].append(Contribution(f"sentence {len(out[i]) + 1}", part, float(probs[i, cls] - p[cls])))
        return [sorted(items, key=lambda c: -abs(c.contribution))[:3] for items in out]
