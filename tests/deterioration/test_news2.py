from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.deterioration.news2 import FEATURES, Vitals, features, news2_score, urgent_response

pytestmark = pytest.mark.unit

NORMAL = Vitals(16, 97, False, 37.0, 120, 70, 1)


def test_normal_observations_score_zero():
    assert news2_score(NORMAL) == 0 and not urgent_response(NORMAL)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"respiratory_rate": 8}, 3),
        ({"respiratory_rate": 9}, 1),
        ({"respiratory_rate": 21}, 2),
        ({"respiratory_rate": 25}, 3),
        ({"oxygen_saturation": 91}, 3),
        ({"oxygen_saturation": 93}, 2),
        ({"oxygen_saturation": 95}, 1),
        ({"on_supplemental_oxygen": True}, 2),
        ({"body_temperature": 35.0}, 3),
        ({"body_temperature": 35.5}, 1),
        ({"body_temperature": 38.5}, 1),
        ({"body_temperature": 39.1}, 2),
        ({"systolic_blood_pressure": 90}, 3),
        ({"systolic_blood_pressure": 100}, 2),
        ({"systolic_blood_pressure": 110}, 1),
        ({"systolic_blood_pressure": 220}, 3),
        ({"heart_rate": 40}, 3),
        ({"heart_rate": 50}, 1),
        ({"heart_rate": 91}, 1),
        ({"heart_rate": 111}, 2),
        ({"heart_rate": 131}, 3),
        ({"consciousness": 2}, 3),
    ],
)
def test_single_parameter_bands(changes, expected):
    v = replace(NORMAL, **changes)
    assert news2_score(v) == expected
    assert urgent_response(v) == (expected == 3)


def test_aggregate_five_triggers_urgent_response():
    v = Vitals(22, 95, False, 38.5, 120, 95, 1)  # 2 + 1 + 0 + 1 + 0 + 1
    assert news2_score(v) == 5 and urgent_response(v)


vitals = st.builds(
    Vitals,
    st.floats(1, 80),
    st.floats(40, 100),
    st.booleans(),
    st.floats(25, 45),
    st.floats(30, 300),
    st.floats(10, 300),
    st.integers(1, 5),
)


@given(vitals)
def test_score_bounds_and_feature_shape(v):
    assert 0 <= news2_score(v) <= 20
    assert features(v).shape == (len(FEATURES),)
