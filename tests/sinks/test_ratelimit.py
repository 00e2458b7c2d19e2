"""The adaptive client-side rate limit, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter
from tests.metrics import sample


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
    assert sample("streamproc_deliver_rate_limit_batches_per_second") == pytest.approx(135)
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


async def test_a_pause_stops_the_bucket_filling() -> None:
    """Nothing accrues while paused: after a 5 s pause, 100 batches at 100/s wait 1 s more."""
    lim, t = limiter(100)
    await lim.acquire(100)
    lim.pause(5.0)
    assert lim.paused_for() == pytest.approx(5.0)
    await lim.acquire(100)
    assert t.now == pytest.approx(6.0)
    assert lim.paused_for() == 0


async def test_a_pause_holds_every_acquirer_and_the_refused_request_goes_first() -> None:
    """Acquirers waiting before a refused one all wait the pause, and it goes before them."""
    loop = asyncio.get_running_loop()
    lim = AdaptiveRateLimiter(10_000)
    order: list[tuple[str, float]] = []

    async def send(name: str, *, first: bool = False) -> None:
        await lim.acquire(1, first=first)
        order.append((name, loop.time()))

    lim.pause(0.3)
    paused_at = loop.time()
    waiting = [asyncio.create_task(send(f"slot-{i}")) for i in range(3)]
    await asyncio.sleep(0.05)  # they queue, the first one sleeping the pause
    refused = asyncio.create_task(send("refused", first=True))
    await asyncio.wait_for(asyncio.gather(*waiting, refused), 5)
    assert [name for name, _ in order] == ["refused", "slot-0", "slot-1", "slot-2"]
    assert min(at for _, at in order) - paused_at >= 0.3


async def test_a_longer_pause_stands_and_a_cancelled_waiter_leaves_no_trace() -> None:
    """A shorter pause does not cut a longer one; a cancelled acquirer frees its turn."""
    lim, _ = limiter(100)
    lim.pause(10.0)
    lim.pause(2.0)
    assert lim.paused_for() == pytest.approx(10.0)
    real = AdaptiveRateLimiter(10_000)
    real.pause(0.2)
    stuck = asyncio.create_task(real.acquire(1))
    queued = asyncio.create_task(real.acquire(1, first=True))
    await asyncio.sleep(0.01)
    queued.cancel()
    stuck.cancel()
    await asyncio.gather(stuck, queued, return_exceptions=True)
    await asyncio.wait_for(real.acquire(1), 1)  # the turn is free again
    assert real.paused_for() == 0


async def test_the_share_scales_the_rate_and_the_gauge() -> None:
    """A share of the partitions takes that share of the feed's rate, adapted as before."""
    lim, t = limiter(270, share=2 / 6)
    assert lim.rate == pytest.approx(90)
    assert sample("streamproc_deliver_rate_limit_batches_per_second") == pytest.approx(90)
    lim.on_rate_limited()
    assert lim.rate == pytest.approx(45)
    lim.set_share(3 / 6)  # a rebalance: the halving is kept
    assert lim.rate == pytest.approx(67.5)
    assert lim.max_rate == pytest.approx(135)
    lim.set_share(0)
    assert sample("streamproc_deliver_rate_limit_batches_per_second") == 0
    lim.set_share(1)
    t.now += 1000
    lim.on_accepted(None)
    assert lim.rate == pytest.approx(270)
    with pytest.raises(ValueError, match="share"):
        lim.set_share(1.5)
