"""The glycaemia_risk model's contract: the last 2 h of CGM (24 readings, 5 min apart, mg/dL) in, the risk of a
hypoglycaemic event (>= 15 min below 70 mg/dL) within the next 60 min out. training/glycaemia/ builds it with
the same window; model_repository/glycaemia_risk/config.pbtxt serves it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.model_contract import ContractViolation, ModelContract, TensorSpec

STEP_S = 5 * 60  # the CGM grid
WINDOW = 24  # readings the model reads: 2 h
HORIZON_S = 60 * 60  # what the risk is about: an event within the next hour
# The training loss is class-balanced, so 0.5 sits near equal sensitivity and specificity.
RISK_THRESHOLD = 0.5

GLYCAEMIA_RISK = ModelContract(
    "glycaemia_risk",
    inputs=(TensorSpec("CGM", "float32", (WINDOW,)),),  # oldest first, raw mg/dL
    outputs=(TensorSpec("RISK", "float32", (1,)),),
    max_batch_size=256,
)


def cgm_rows(windows: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """The model's inputs from complete windows of the latest WINDOW readings; a short or gappy one is refused."""
    x = np.asarray(windows, dtype=np.float32).reshape(len(windows), -1)
    if x.shape[1] != WINDOW:
        raise ContractViolation(f"need the last {WINDOW} CGM readings, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ContractViolation("CGM window has missing readings")
    return {"CGM": x}
