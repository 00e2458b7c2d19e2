"""The client-side rate limit: the feed's batches per second, shared, adapted and paused.

mParticle's limits are per API key (270 batches per second by default, 429 past it), so a
deliverer shares them with every other request of the key:

- The rate is the feed's. A deliverer takes ``share`` of it, the part of the topic's
  partitions it is assigned (:meth:`~AdaptiveRateLimiter.set_share` on every rebalance),
  so the members of the group together stay within the feed's rate however many they are.
- A 429 pauses every acquirer of the process (:meth:`~AdaptiveRateLimiter.pause`) until
  its ``Retry-After`` (or backoff) has passed: the other slots would only collect 429s
  meanwhile. The refused request goes first when the pause ends
  (``acquire(n, first=True)``), before the requests that were waiting.
- A 429 also halves the rate, a ``X-mp-rate-limit-percentage-used`` near 100 trims it
  before any 429 comes, and while answers show room again it climbs back slowly (a part
  of the maximum per second) up to the share of the configured rate, never above.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from streamproc import metrics


class AdaptiveRateLimiter:
    """``await acquire(n)`` before sending ``n`` batches; report answers with ``on_*``.

    Requests may be larger than the bucket (100 batches at a lowered rate of 20/s): the
    bucket goes into debt and the caller sleeps it off, so the average rate holds.
    Acquirers are served one at a time, in order, refused requests (``first``) before the
    others. Decreases happen at most once per ``adjust_interval_s``: the many 429s of one
    burst are one signal, not many. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        *,
        share: float = 1.0,
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
        self.feed_rate = rate
        self._feed_min_rate = min(rate, min_rate if min_rate is not None else max(1.0, rate / 20))
        self.burst_s = burst_s
        self.decrease = decrease
        self.adjust_interval_s = adjust_interval_s
        self.recover_per_s = recover_per_s
        self.warn_percent = warn_percent
        self.high_percent = high_percent
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self.share = 0.0
        self.max_rate = self.min_rate = self._rate = 0.0
        self._tokens = 0.0
        self._filled_at = now
        self._decreased_at = now - adjust_interval_s
        self._recovered_at = now
        self._paused_until = -math.inf
        self._has_share = asyncio.Event()
        # The turn: one acquirer at a time; refused requests queue before the others.
        self._busy = False
        self._first: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()
        self.set_share(share)
        self._tokens = self._capacity()

    @property
    def rate(self) -> float:
        """Batches per second allowed now (this process's share, as adapted)."""
        return self._rate

    def paused_for(self) -> float:
        """Seconds until the pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def _capacity(self) -> float:
        return max(1.0, self._rate * self.burst_s)

    def _refill(self) -> None:
        now = self._clock()
        # Nothing accrues before _filled_at: a pause moves it to the pause's end.
        if now > self._filled_at:
            added = (now - self._filled_at) * self._rate
            self._tokens = min(self._capacity(), self._tokens + added)
            self._filled_at = now

    # --- acquiring ----------------------------------------------------------------------

    async def acquire(self, n: int, *, first: bool = False) -> None:
        """Wait until ``n`` batches may be sent: no pause in force, and the rate allows them.

        ``first``: the request was refused with a 429 and is sent again; once the pause
        ends it goes before every acquirer that is not ``first``. Cancellation leaves the
        limiter as it was for the others (tokens already taken stay taken).
        """
        await self._take_turn(first)
        holding, taken = True, False
        try:
            while True:
                left = self._paused_until - self._clock()
                if left > 0:
                    await self._sleep(left)
                    if not first and self._first:
                        holding = False
                        await self._step_back()
                        holding = True
                    continue
                if self._rate <= 0:
                    # No partitions, no share of the rate: nothing is due until one comes.
                    await self._has_share.wait()
                    continue
                self._refill()
                if not taken:
                    self._tokens -= n
                    taken = True
                # A small tolerance: sleeping off a debt leaves a rounding error behind.
                if self._tokens > -1e-6:
                    return
                await self._sleep(-self._tokens / self._rate)
        finally:
            if holding:
                self._release()

    async def _take_turn(self, first: bool) -> None:
        if not self._busy and not self._first and not self._others:
            self._busy = True
            return
        queue = self._first if first else self._others
        await self._wait_for(self._enqueue(queue, front=False), queue)

    async def _step_back(self) -> None:
        """Hand the turn to the refused requests waiting; take it again before the others."""
        waiter = self._enqueue(self._others, front=True)
        self._release()
        await self._wait_for(waiter, self._others)

    def _enqueue(self, queue: deque[asyncio.Future[None]], *, front: bool) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if front:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        return waiter

    async def _wait_for(
        self, waiter: asyncio.Future[None], queue: deque[asyncio.Future[None]]
    ) -> None:
        """Return holding the turn, or raise CancelledError without holding it."""
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in queue:
                    queue.remove(waiter)
            else:
                self._release()  # the turn came just as this was cancelled: pass it on
            raise

    def _release(self) -> None:
        for queue in (self._first, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the turn passes on; _busy stays True
                    return
        self._busy = False

    # --- what mParticle says ------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Let nothing be sent for ``seconds`` from now; a pause ending later stands."""
        until = self._clock() + max(0.0, seconds)
        if until > self._paused_until:
            self._refill()
            self._paused_until = until
            # Nothing accrues while paused: mParticle's own bucket is what the pause refills.
            self._filled_at = max(self._filled_at, until)

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

    def set_share(self, share: float) -> None:
        """Take ``share`` (0 to 1) of the feed's rate: the part of the partitions assigned.

        The adapted rate keeps its proportion to the maximum (a rate halved after a 429
        stays halved). With 0 (no partitions) nothing is sent until a share comes.
        """
        if not 0 <= share <= 1:
            raise ValueError(f"share must be between 0 and 1, not {share}")
        self._refill()
        old_max = self.max_rate
        self.share = share
        self.max_rate = self.feed_rate * share
        self.min_rate = self._feed_min_rate * share
        if share == 0:
            self._has_share.clear()
            self._set(0.0)
            return
        rate = self.max_rate if old_max <= 0 else self._rate * self.max_rate / old_max
        self._set(min(self.max_rate, max(self.min_rate, rate)))
        self._has_share.set()

    def _lower(self, factor: float) -> None:
        now = self._clock()
        if self.share == 0 or now - self._decreased_at < self.adjust_interval_s:
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
