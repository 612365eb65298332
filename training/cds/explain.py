"""Per-prediction explanations: integrated gradients over the labs, sentence occlusion over the note."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from services.cds.explanation import Contribution, sentences
from services.cds.labs import PANEL

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Explanation:
    label: str
    probability: float
    labs: tuple[Contribution, ...]  # the ordered labs, largest |contribution| first
    sentences: tuple[Contribution, ...]  # empty unless the note and an embedder were given
    labs_baseline_probability: float  # the same note with no labs at all: labs contributions sum to the difference


def explain(
    model: torch.nn.Module,
    note_embedding: np.ndarray,
    labs: np.ndarray,
    labels: Sequence[str],
    *,
    target: int | None = None,
    note: str | None = None,
    embed: Embed | None = None,
    top_k: int = 5,
    n_steps: int = 32,
) -> Explanation:
    """Why `model` scores `labels[target]` (default: its top class) for one patient.

    Labs: integrated gradients (captum) from "no labs ordered" to this panel, over each lab's z-score and its
    ordered flag together, so contributions sum to p(panel) - p(no labs). Note: leave-one-sentence-out, each
    sentence's contribution is p(note) - p(note without it); costs one embedding batch, so only when asked.
    """
    from captum.attr import IntegratedGradients

    emb = torch.from_numpy(np.asarray(note_embedding, dtype=np.float32).reshape(1, -1))
    raw = torch.from_numpy(np.asarray(labs, dtype=np.float32).reshape(1, -1))
    with torch.no_grad():
        probs = model(emb, raw)[0]
    cls = int(probs.argmax()) if target is None else target
    # Eager CdsMultimodal or its TorchScript: both expose these (exported) members.
    standardise = cast(Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], model.standardise)
    head = cast(torch.nn.Module, model.head)
    z, missing = standardise(raw)
    n = z.shape[1]

    def probability(lab_part: torch.Tensor) -> torch.Tensor:
        features = torch.cat([emb.expand(lab_part.shape[0], -1), lab_part], dim=1)
        return torch.softmax(head(features), dim=1)[:, cls]

    inputs = torch.cat([z, missing], dim=1)
    baseline = torch.cat([torch.zeros_like(z), torch.ones_like(missing)], dim=1)
    attributions = IntegratedGradients(probability).attribute(inputs, baselines=baseline, n_steps=n_steps)
    per_lab = (attributions[0, :n] + attributions[0, n:]).detach().numpy()
    with torch.no_grad():
        no_labs = float(probability(baseline)[0])
    present = [i for i in range(n) if not bool(missing[0, i])]
    lab_items = sorted(
        (Contribution(PANEL[i].key, float(raw[0, i]), float(per_lab[i])) for i in present),
        key=lambda c: -abs(c.contribution),
    )[:top_k]

    sentence_items: list[Contribution] = []
    if note is not None and embed is not None:
        parts = sentences(note)
        variants = [" ".join(parts[:i] + parts[i + 1 :]) for i in range(len(parts))]
        occluded = torch.from_numpy(embed(variants))
        with torch.no_grad():
            p_without = model(occluded, raw.expand(len(variants), -1))[:, cls].numpy()
        sentence_items = sorted(
            (
                Contribution(f"sentence {i + 1}", s, float(probs[cls]) - float(p))
                for i, (s, p) in enumerate(zip(parts, p_without, strict=True))
            ),
            key=lambda c: -abs(c.contribution),
        )[:top_k]
    return Explanation(labels[cls], float(probs[cls]), tuple(lab_items), tuple(sentence_items), no_labs)
