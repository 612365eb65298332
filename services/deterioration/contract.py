"""The deterioration_risk model's contract: seven raw vital signs in, the risk of a NEWS2 urgent-response trigger
out (training/deterioration_risk.py builds it; model_repository/deterioration_risk/config.pbtxt serves it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.model_contract import ModelContract, TensorSpec
from services.deterioration.news2 import FEATURES, Vitals, features

DETERIORATION_RISK = ModelContract(
    "deterioration_risk",
    inputs=(TensorSpec("VITALS", "float32", (len(FEATURES),)),),  # FEATURES order, raw units
    outputs=(TensorSpec("RISK", "float32", (1,)),),
    max_batch_size=256,
)
# The model is trained on NEWS2's urgent-response trigger: 0.5 is its decision point.
ALERT_THRESHOLD = 0.5


def vitals_rows(vitals: Sequence[Vitals]) -> dict[str, np.ndarray]:
    """The model's inputs for a batch of vital-sign sets."""
    return {"VITALS": np.stack([features(v) for v in vitals]).astype(np.float32)}
