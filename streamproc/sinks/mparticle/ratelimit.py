"""The client-side rate limit: a token bucket in batches per second that mParticle adapts.

mParticle allows 270 batches per second by default and answers 429 past it. The limiter
starts at the configured rate; a 429 halves it, a ``X-mp-rate-limit-percentage-used``
near 100 trims it before any 429 comes, and while answers show room again it climbs back
slowly (a share of the configured rate per second) up to the configured rate, never above.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from streamproc import metrics


class AdaptiveRateLimiter:
    """``await acquire(n)`` before sending ``n`` batches; report answers with ``on_*``.

    Requests may be larger than the bucket (100 batches at a lowered rate of 20/s): the
    bucket goes into debt and the caller sleeps it off, so the average rate holds.
    Acquirers are served in order. Decreases happen at most once per
    ``adjust_interval_s``: the many 429s of one burst are one signal, not many.
    """

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        burst_s: float = 1.0,
        decrease: float = 0.5,
        adjust_interval_s: float = 1.0,
        recover_per_s: float = 0.05,
        warn_percent: float = 80.0,
        high_percent: float = 95.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.max_rate = rate
        self.min_rate = min(rate, min_rate if min_rate is not None else max(1.0, rate / 20))
        self.burst_s = burst_s
        self.decrease = decrease
        self.adjust_interval_s = adjust_interval_s
        self.recover_per_s = recover_per_s
        self.warn_percent = warn_percent
        self.high_percent = high_percent
        self._clock = clock
        self._sleep = sleep
        self._rate = rate
        now = clock()
        self._tokens = self._capacity()
        self._filled_at = now
        self._decreased_at = now - adjust_interval_s
        self._recovered_at = now
        self._lock = asyncio.Lock()
        metrics.DL_RATE.set(rate)

    @property
    def rate(self) -> float:
        """Batches per second allowed now."""
        return self._rate

    def _capacity(self) -> float:
        return max(1.0, self._rate * self.burst_s)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity(), self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` batches may be sent at the current rate."""
        async with self._lock:
            self._refill()
            self._tokens -= n
            if self._tokens < 0:
                await self._sleep(-self._tokens / self._rate)

    def on_rate_limited(self) -> None:
        """A 429: halve the rate (once per adjustment interval)."""
        self._lower(self.decrease)

    def on_accepted(self, percent_used: float | None) -> None:
        """A 2xx with mParticle's percentage used: trim near 100, else recover slowly."""
        if percent_used is not None and percent_used >= self.high_percent:
            self._lower(0.8)
        elif percent_used is not None and percent_used >= self.warn_percent:
            self._lower(0.95)
        else:
            self._recover()

    def _lower(self, factor: float) -> None:
        now = self._clock()
        if now - self._decreased_at < self.adjust_interval_s:
            return
        self._refill()
        self._set(max(self.min_rate, self._rate * factor))
        self._decreased_at = self._recovered_at = now

    def _recover(self) -> None:
        now = self._clock()
        elapsed, self._recovered_at = now - self._recovered_at, now
        if self._rate < self.max_rate:
            self._refill()
            step = self.max_rate * self.recover_per_s * elapsed
            self._set(min(self.max_rate, self._rate + step))

    def _set(self, rate: float) -> None:
        self._rate = rate
        self._tokens = min(self._tokens, self._capacity())
        metrics.DL_RATE.set(rate)
