"""The change-against-prior figures count correct and false pairings, growth errors and registration error the way
the model card describes them (plain values: no model, no registration)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from services.imaging.postprocess import Candidate, Change
from training.imaging import lung
from training.imaging.change_eval import PatientScore, score_patient, summarise
from training.imaging.synthetic_ct import Nodule

pytestmark = pytest.mark.unit
DAYS = 90.0
SHIFT = (3.0, 0.0, 0.0)  # the follow-up patient moved 3 mm along x


def nodule(label: int, centre: tuple[float, float, float], growth: float = 1.0) -> Nodule:
    return Nodule(label, centre, 10.0, 0.5, "solid", False, "smooth", "central", 10.0, growth)


def followup(n: Nodule, growth: float, extra_z: float = 0.0) -> Nodule:
    x, y, z = n.centre_lps_mm
    centre = (x + SHIFT[0], y + SHIFT[1], z + SHIFT[2] + extra_z)
    return replace(n, centre_lps_mm=centre, volume_growth_factor=growth)


def candidate(volume_ml: float) -> Candidate:
    return Candidate((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), volume_ml, 10.0, 10.0, 0.9, 10)


def change(pct: float | None) -> Change:
    if pct is None:
        return Change(candidate(0.5), None, None, None, None)
    prior, now = candidate(1.0), candidate(1.0 + pct / 100)
    vdt = DAYS * math.log(2) / math.log(now.volume_ml) if pct > 0 else None
    return Change(now, prior, 1.0, pct, vdt)


def scored() -> PatientScore:
    # N1 doubled, N2 stable, N3 grew 1.5x but was missed on the baseline, N4 grew 1.5x but measured as shrunk.
    before = [nodule(1, (0, 0, 0)), nodule(2, (50, 0, 0)), nodule(3, (0, 50, 0)), nodule(4, (0, 0, 50))]
    after = [
        followup(before[0], 2.0),
        followup(before[1], 1.0),
        followup(before[2], 1.5, extra_z=1.0),
        followup(before[3], 1.5),
    ]
    # Baseline candidates: 0 = N1, 1 = N2, 2 = N4, 3 and 4 false positives.
    hits_before = {0: 0, 1: 1, 3: 2}
    # Follow-up candidates: 0 = N1, 1 = N2, 2 = N3, 3 = N4, 4 and 5 false positives; paired as below.
    hits_after = {0: 0, 1: 1, 2: 2, 3: 3}
    prior_index = [0, 3, None, 2, 4, 1]  # N1 itself; N2 with a baseline FP; N3 new; N4 itself; FP-FP; FP with N2
    changes = [change(80.0), change(5.0), change(None), change(-10.0), change(0.0), change(3.0)]
    to_prior = np.eye(4)
    to_prior[:3, 3] = [-s for s in SHIFT]
    return score_patient(before, after, hits_before, hits_after, changes, prior_index, to_prior, DAYS)


def test_pairings_are_scored_against_the_truth():
    m = summarise([scored()])
    assert (m.patients, m.nodules, m.detected_in_both, m.matched_to_itself) == (1, 4, 3, 2)
    assert m.correct_match_rate == pytest.approx(2 / 3)
    assert (m.matches, m.false_matches, m.false_matches_between_false_positives) == (5, 3, 1)


def test_growth_errors_only_for_nodules_matched_to_themselves():
    m = summarise([scored()])
    assert m.volume_change_abs_error_pct == pytest.approx((20 + 60) / 2)  # N1: 80 vs 100 %, N4: -10 vs 50 %
    assert m.volume_change_median_abs_error_pct == pytest.approx(40)
    assert m.volume_change_abs_error_pct_grown == pytest.approx(40)
    assert math.isnan(m.volume_change_abs_error_pct_stable)  # the stable N2 was paired with a false positive
    assert (m.grown_matched, m.right_sign_of_change, m.doubling_time_measured) == (2, 0.5, 1)
    truth_vdt, measured_vdt = 90.0, DAYS * math.log(2) / math.log(1.8)
    assert m.doubling_time_abs_error_days == pytest.approx(abs(measured_vdt - truth_vdt))
    assert m.doubling_time_median_abs_error_days == pytest.approx(abs(measured_vdt - truth_vdt))


def test_registration_error_is_the_mapped_followup_truth_against_the_baseline_truth():
    m = summarise([scored()])
    assert m.registration_error_mm_max == pytest.approx(1.0)  # N3 also moved 1 mm that the map does not undo
    assert m.registration_error_mm_mean == pytest.approx(1 / 4)
    assert m.unregistered_distance_mm_mean == pytest.approx((3 * 3 + math.sqrt(10)) / 4)


def test_nothing_to_score_reads_as_nan_not_as_an_error():
    m = summarise([])
    assert m.nodules == 0 and math.isnan(m.correct_match_rate) and math.isnan(m.registration_error_mm_max)


def test_change_patients_are_held_out_from_training_and_the_other_sets():
    others = set(lung.TRAIN_SEEDS) | set(lung.VALIDATION_SEEDS) | set(lung.TEST_SEEDS)
    assert len(lung.CHANGE_SEEDS) >= 8 and not others & set(lung.CHANGE_SEEDS)
