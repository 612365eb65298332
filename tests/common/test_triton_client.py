import pytest

from services.common.triton import CircuitBreaker, backoff_delays

pytestmark = pytest.mark.unit


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown():
    b = CircuitBreaker(threshold=3, cooldown_s=10)
    for t in range(2):
        b.failure(now=t)
    assert b.allow(now=2) and b.state == "closed"
    b.failure(now=3)
    assert b.state == "open" and not b.allow(now=5)
    assert b.allow(now=13)  # one trial call after the cool-down
    b.success()
    assert b.state == "closed" and b.failures == 0


def test_backoff_is_bounded_and_grows():
    delays = backoff_delays(8, base=0.1, cap=1.0)
    assert len(delays) == 8 and all(0 <= d <= 1.0 for d in delays)
    assert all(d <= 0.1 * 2**i for i, d in enumerate(delays))
