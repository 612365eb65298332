"""The adr_risk model's contract: a drug start's event history and static context in, the risk of four named
reactions in the next 90 days and the attention over the history out (training/research/adr.py builds it;
model_repository/adr_risk/config.pbtxt serves it)."""

from __future__ import annotations

from services.common.model_contract import ModelContract, TensorSpec
from services.research.adr.drugs import REACTIONS
from services.research.adr.features import SEQUENCE_FEATURES, SEQUENCE_LENGTH, STATIC_FEATURES

MODEL_NAME = "adr_risk"
HORIZON_DAYS = 90  # a reaction counts when its onset falls within this after the start
ADR_RISK = ModelContract(
    MODEL_NAME,
    inputs=(
        TensorSpec("SEQUENCE", "float32", (SEQUENCE_LENGTH, len(SEQUENCE_FEATURES))),  # features.SEQUENCE_FEATURES
        TensorSpec("STATIC", "float32", (len(STATIC_FEATURES),)),  # features.STATIC_FEATURES
    ),
    outputs=(
        TensorSpec("RISK", "float32", (len(REACTIONS),)),  # REACTIONS order, probabilities
        TensorSpec("ATTENTION", "float32", (SEQUENCE_LENGTH,)),  # RETAIN-style weights over SEQUENCE's rows
    ),
    max_batch_size=256,
)
# Alert when a reaction's risk reaches its threshold: set by hand near the 85th-90th percentile of the risk over
# starts at risk in a development run; the model card reports sensitivity and PPV at them.
THRESHOLDS: dict[str, float] = dict(zip(REACTIONS, (0.3, 0.25, 0.1, 0.15), strict=True))
