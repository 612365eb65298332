"""Change against the prior study: the follow-up registered onto the prior (the synthetic patient moved by a
known rigid transform), lesions matched, growth and volume doubling time measured against the known truth."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from services.imaging.postprocess import Candidate
from services.imaging.priors import PriorFinding, PriorStudy, measure_change, study_date
from training.imaging import lung
from training.imaging.synthetic_ct import FOLLOWUP_DAYS, Nodule, generate_ct, generate_followup, nodule_truth

pytestmark = pytest.mark.unit
SEED = 7  # nodules of 15 and 12 mm growing 2.4x and 1.5x; the patient moved them by 9 and 6 mm


def as_candidate(n: Nodule) -> Candidate:
    return Candidate(n.centre_lps_mm, (0.0, 0.0, 0.0), n.volume_ml, n.diameter_mm, 0.0, 0.9, 1)


def test_followup_registered_to_its_prior_matches_lesions_and_recovers_growth():
    seed = SEED
    baseline, followup = generate_ct(seed, n_nodules=2), generate_followup(seed, n_nodules=2)
    prior = PriorStudy(
        "1.2.1",
        "1.2.1.1",
        baseline.study_date,
        (),
        tuple(PriorFinding(f"prior-{n.label}", as_candidate(n)) for n in baseline.nodules),
    )
    current = [as_candidate(n) for n in followup.nodules]
    days = (followup.study_date - baseline.study_date).days
    assert days == FOLLOWUP_DAYS

    got = measure_change(
        lung.prepare(lung.phantom_volume(followup)), lung.prepare(lung.phantom_volume(baseline)), current, prior, days
    )

    # The patient moved by up to 6 mm and 3 degrees: registered, each lesion lands within 1 mm of its prior self.
    assert got.prior_ids == [f"prior-{n.label}" for n in followup.nodules]
    assert all(c.distance_mm is not None and c.distance_mm < 1.0 for c in got.changes)
    assert [c.current for c in got.changes] == current  # reported in the follow-up's own frame
    for change, nodule in zip(got.changes, followup.nodules, strict=True):
        assert change.volume_change_pct == pytest.approx(100 * (nodule.volume_growth_factor - 1), abs=0.01)
        if nodule.volume_growth_factor > 1:
            truth = days * math.log(2) / math.log(nodule.volume_growth_factor)
            assert change.doubling_time_days == pytest.approx(truth, rel=1e-3)
        else:
            assert change.doubling_time_days is None


def test_without_registration_the_same_lesions_would_be_too_far_apart_to_match():
    before, after = nodule_truth(SEED, n_nodules=2), nodule_truth(SEED, n_nodules=2, followup=True)
    moved = max(math.dist(a.centre_lps_mm, b.centre_lps_mm) for a, b in zip(before, after, strict=True))
    assert moved > 5.0  # the test above is not trivially true


def test_study_dates():
    assert study_date("20250106") == dt.date(2025, 1, 6)
    assert study_date("") is None and study_date(None) is None and study_date("2025-01-06") is None
