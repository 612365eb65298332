"""What an explanation is made of, shared by the engine's explanations and the model's offline ones."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Contribution:
    feature: str  # lab key, or "sentence N"
    value: float | str  # the lab value (raw units) or the sentence text
    contribution: float  # signed change in the explained class's probability


def sentences(note: str) -> list[str]:
    """The note's sentences, the units that leave-one-sentence-out explanations remove."""
    return [s for s in _SENTENCE.split(note.strip()) if s]
