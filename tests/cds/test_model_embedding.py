"""Note embedding: the bundled all-MiniLM-L6-v2 loads offline and is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from services.cds.contract import EMBEDDING_DIM
from services.common.sentences import embed

pytestmark = pytest.mark.unit


def test_embedding_shape_norm_and_determinism() -> None:
    texts = ["54-year-old woman presenting with polyuria and polydipsia.", "Denies chest pain."]
    first, again = embed(texts), embed(list(reversed(texts)))[::-1]
    assert first.shape == (2, EMBEDDING_DIM) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.allclose(first, again, atol=1e-5)
    assert embed([]).shape == (0, EMBEDDING_DIM)


def test_similar_notes_are_closer_than_unrelated_ones() -> None:
    a, b, c = embed(["fever and productive cough", "cough with green sputum and fever", "painful swollen big toe"])
    assert float(a @ b) > float(a @ c)
