import json

import numpy as np
import pytest
import torch

from training.evaluation import auc_score
from training.glycaemia.sequences import WINDOW
from training.glycaemia.simulation import Cohort, generate
from training.glycaemia.training import train

pytestmark = pytest.mark.unit


def test_auc_matches_definition():
    y = np.array([0, 0, 1, 1])
    assert auc_score(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc_score(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auc_score(np.zeros(3), np.array([0.1, 0.2, 0.3])) is None


def test_simulation_is_cached_by_its_parameters(tmp_path):
    cohort = Cohort(("child#001",), days=1, seed=3)
    first = generate(cohort, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{cohort.key()}.npz"]
    trace = first["child#001"]
    assert trace.dtype == np.float32 and len(trace) == 24 * 12 + 1
    assert 39 <= trace.min() and trace.max() <= 600  # the simulated sensor's range
    np.testing.assert_array_equal(generate(cohort, tmp_path)["child#001"], trace)
    assert Cohort(("child#001",), days=1, seed=4).key() != cohort.key()


def test_tiny_training_run_writes_a_torchscript_model(tmp_path):
    evaluation = train(
        tmp_path / "glycaemia_risk",
        days=1,
        train_patients=("child#001", "adult#001"),
        test_patients=("child#005",),
        epochs=2,
        cache_dir=tmp_path / "cache",
    )
    written = json.loads((tmp_path / "glycaemia_risk" / "evaluation.json").read_text())
    assert written["simulated_test"]["windows"] == evaluation.simulated_test.windows > 0
    assert written["iglu_hall"]["subjects"] == 19
    model = torch.jit.load(str(tmp_path / "glycaemia_risk" / "1" / "model.pt"))
    falling = torch.linspace(160, 75, WINDOW)
    steady = torch.full((WINDOW,), 150.0)
    risk = model(torch.stack([falling, steady]))
    assert risk.shape == (2, 1) and ((risk >= 0) & (risk <= 1)).all()
    assert risk[0, 0] > risk[1, 0]
