import json

import numpy as np
import pytest
import torch

from services.deterioration.news2 import Vitals, features
from training.deterioration_risk import train

pytestmark = pytest.mark.unit


def test_training_writes_a_torchscript_model_that_ranks_risk(tmp_path):
    evaluation = train(tmp_path, n_train=4000, n_test=1000, epochs=3)
    assert json.loads((tmp_path / "evaluation.json").read_text())["auc"] == evaluation.auc
    assert evaluation.auc > 0.9  # even a short run learns NEWS2's trigger on this data
    model = torch.jit.load(str(tmp_path / "1" / "model.pt"))
    x = torch.from_numpy(
        np.stack([features(Vitals(15, 97, False, 36.8, 125, 72, 1)), features(Vitals(28, 88, True, 39.5, 85, 135, 3))])
    )
    low, high = model(x)[:, 0].tolist()
    assert low < high
