"""The trial-matching evaluation end to end on a tiny Synthea population: it runs and reports every measure."""

from __future__ import annotations

import pytest

from training.research import trials_eval

pytestmark = pytest.mark.unit


def test_tiny_population_reports_every_measure(tmp_path):
    result = trials_eval.evaluate(6, 3, threads=1, cache_dir=tmp_path)
    assert result["population"]["patients"] == 6
    assert result["population"]["trials"] >= 30
    assert set(result["criterion"]) >= {"accuracy", "scored", "by_type", "confusion_gold_vs_predicted"}
    assert result["criterion"]["scored"] > 0 and 0 <= result["criterion"]["accuracy"] <= 1
    assert set(result["eligibility"]) >= {"precision", "recall", "f1", "candidate_recall"}
    assert set(result["screening"]) >= {"baseline", "matcher", "work_saved", "per_trial"}
    assert "TrialGPT criterion-level accuracy" in result["published_anchors"]
    assert "synthetic" in result["note"].lower() or "synthea" in result["note"].lower()
    assert "Synthea patients" in trials_eval.report(result)
