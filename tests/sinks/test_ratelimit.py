"""The adaptive client-side rate limit, on a fake clock."""

from __future__ import annotations

import pytest

from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter
from tests.sinks.support import metric


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(rate: float = 100.0, **kwargs: float) -> tuple[AdaptiveRateLimiter, FakeTime]:
    t = FakeTime()
    return AdaptiveRateLimiter(rate, clock=t.clock, sleep=t.sleep, **kwargs), t


async def test_holds_the_average_rate() -> None:
    """After the first second's burst, n batches take n/rate seconds."""
    lim, t = limiter(100)
    for _ in range(11):
        await lim.acquire(100)
    assert t.now == pytest.approx(10.0)


async def test_request_larger_than_bucket_waits_off_its_debt() -> None:
    """A 100-batch request at 20/s waits until the rate is met instead of forever."""
    lim, t = limiter(20)
    await lim.acquire(100)
    assert t.slept == [pytest.approx(4.0)]


async def test_429_halves_once_per_interval_and_floors() -> None:
    """429s halve the rate, once per adjustment interval, never below the floor."""
    lim, t = limiter(270)
    lim.on_rate_limited()
    lim.on_rate_limited()
    assert lim.rate == pytest.approx(135)
    assert metric("streamproc_deliver_rate_limit_batches_per_second") == pytest.approx(135)
    for _ in range(20):
        t.now += 1.0
        lim.on_rate_limited()
    assert lim.rate == pytest.approx(270 / 20)


async def test_percentage_near_100_slows_before_any_429() -> None:
    """Percentage used >= 80 trims the rate a little, >= 95 more."""
    lim, t = limiter(100)
    lim.on_accepted(85)
    assert lim.rate == pytest.approx(95)
    t.now += 1.0
    lim.on_accepted(99)
    assert lim.rate == pytest.approx(76)


async def test_recovers_slowly_up_to_the_configured_rate() -> None:
    """With room shown, the rate climbs 5% of the maximum per second, never above it."""
    lim, t = limiter(200)
    lim.on_rate_limited()
    assert lim.rate == pytest.approx(100)
    t.now += 2.0
    lim.on_accepted(10)
    assert lim.rate == pytest.approx(120)
    t.now += 100.0
    lim.on_accepted(None)
    assert lim.rate == pytest.approx(200)


def test_rate_must_be_positive() -> None:
    """A zero rate is a configuration error, not an endless wait."""
    with pytest.raises(ValueError, match="positive"):
        AdaptiveRateLimiter(0)
