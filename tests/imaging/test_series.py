"""Series assembly: completion by expected count or quiet period, repeats ignored, late instances revise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.imaging.routes import select as route
from services.imaging.series import COMPLETE, Arrival, SeriesState, add, compact, complete, due, expired

pytestmark = pytest.mark.unit


def arrival(n: int, at: float, sha: str = "", expected: int = 0) -> Arrival:
    return Arrival(
        "1.2.3",
        "1.2",
        f"1.2.3.{n}",
        "1.2.840.10008.5.1.4.1.1.2",
        "SYN-1",
        "CT",
        "CHEST",
        n,
        f"file:///blobs/{n}",
        sha or f"h{n}",
        at,
        expected,
    )


def test_quiet_period_completes_and_orders_by_instance_number():
    state = SeriesState()
    for n, at in ((3, 1.0), (1, 2.0), (2, 3.0)):
        assert add(state, arrival(n, at))
    assert due(state, 10.0, quiet_s=10.0) is None
    assert due(state, 13.0, quiet_s=10.0) == "quiet-period"
    done = complete(state, "quiet-period")
    assert done.revision == 1 and [i.instance_number for i in done.instances] == [1, 2, 3]
    assert state.status == COMPLETE and due(state, 100.0, 10.0) is None


def test_expected_count_completes_without_waiting():
    state = SeriesState()
    for n in range(1, 4):
        add(state, arrival(n, float(n), expected=3))
    assert due(state, 3.0, quiet_s=60.0) == "expected-count"


def test_repeat_changes_nothing_and_new_content_counts():
    state = SeriesState()
    assert add(state, arrival(1, 1.0))
    assert not add(state, arrival(1, 5.0))  # same UID, same hash
    assert state.last_seen == 1.0
    assert add(state, arrival(1, 6.0, sha="other"))  # same UID, new content: a new version
    assert state.instances["1.2.3.1"].sha256 == "other"


def test_late_instance_opens_a_revision():
    state = SeriesState()
    add(state, arrival(1, 1.0))
    complete(state, "quiet-period")
    assert not add(state, arrival(1, 50.0))  # a repeat does not reopen it
    assert state.status == COMPLETE
    assert add(state, arrival(2, 50.0))
    assert due(state, 70.0, quiet_s=10.0) == "quiet-period"
    again = complete(state, "quiet-period")
    assert again.revision == 2 and len(again.instances) == 2
    assert state.completed_counts == [1, 2]


def test_completed_series_past_retention_keep_only_their_revision_count():
    state = SeriesState()
    for n in (1, 2, 3):
        add(state, arrival(n, 1.0))
    assert not expired(state, 10_000.0, retention_s=3600)  # still collecting
    complete(state, "quiet-period")
    assert not expired(state, 100.0, retention_s=3600) and expired(state, 4000.0, retention_s=3600)
    compact(state)
    assert not state.instances and not expired(state, 9999.0, retention_s=3600)
    assert SeriesState.from_json(state.to_json()) == state and due(state, 9999.0, quiet_s=10.0) is None
    add(state, arrival(4, 5000.0))  # later still: a revision of its own, numbered after the earlier one
    assert complete(state, "quiet-period").revision == 2 and len(state.instances) == 1


@given(st.permutations(list(range(1, 9))))
def test_arrival_order_does_not_matter(order):
    state = SeriesState()
    for k, n in enumerate(order):
        add(state, arrival(n, float(k)))
    restored = SeriesState.from_json(state.to_json())
    assert restored == state
    assert [i.instance_number for i in complete(restored, "quiet-period").instances] == list(range(1, 9))


@pytest.mark.parametrize(
    ("modality", "body_part", "description", "expected"),
    [
        ("CT", "CHEST", "", "lung-nodule"),
        ("CT", "", "CT THORAX LOW DOSE", "lung-nodule"),
        ("MR", "BRAIN", "", "stroke"),
        ("MR", "HEAD", "", "stroke"),
        ("CT", "ABDOMEN", "", None),
        ("US", "CHEST", "", None),
    ],
)
def test_routing_by_modality_and_body_part(modality, body_part, description, expected):
    assert route(modality, body_part, description) == expected
