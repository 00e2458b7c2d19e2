"""One bulk request carried to its end: every batch delivered or dead-lettered, none dropped.

- 202: delivered.
- 429: every request of the process waits ``Retry-After`` (at most ``retry_after_max_s``;
  else backoff with jitter), since mParticle's limits are the API key's: the limiter
  pauses, the refused request goes first after the pause, and the client rate is lowered.
- 5xx, timeouts, refused connections: exponential backoff with jitter, without limit by
  default (``max_retries``), then the request is sent again byte for byte.
- 400, 413, 422: the request is split in halves, recursively, until the batches mParticle
  refuses are alone; those are dead-lettered with mParticle's answer.
- Any other 4xx (404, 405, 408, 409...) says nothing about the batches (a wrong
  ``mparticle.base_url``, a proxy): dead-lettering would empty the stream into the DLQ.
  The request is retried every ``auth_retry_s``, with an ERROR naming the URL.
- 401/403: delivery pauses. Readiness goes false, ``DL_AUTH_FAILED`` is 1 and an ERROR is
  logged; the request is tried again every ``auth_retry_s`` until the credentials work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from streamproc import metrics
from streamproc.backoff import RETRY_AFTER_MAX_S, Backoff
from streamproc.errors import (
    AuthError,
    BadRequest,
    HttpError,
    RateLimited,
    ServerError,
    StreamprocError,
)
from streamproc.formats.envelope import H_ITEM_TIME, H_SOURCE
from streamproc.health import Health
from streamproc.metrics import AgeSeries
from streamproc.redact import mask_url
from streamproc.sinks.mparticle.batcher import Batch, request_body, where
from streamproc.sinks.mparticle.client import MParticleClient
from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter

log = logging.getLogger(__name__)

AUTH_COMPONENT = "mparticle_credentials"
# The answers that refuse the batches themselves: split to find which.
SPLIT_STATUSES = frozenset({400, 413, 422})

# (batch, reason code, reason): writes the batch to the dead-letter topic durably.
DeadLetterFn = Callable[[Batch, str, str], Awaitable[None]]

# Per source, the item times of a request's batches: epoch milliseconds, sorted.
ItemTimes = dict[bytes, list[int]]


def item_times(batches: Iterable[Batch]) -> ItemTimes:
    """What the end-to-end histogram needs of ``batches`` (a missing or broken time is left out).

    The deliverer takes them as it packs a request, while the records are fresh in the CPU's
    cache; at the 202 the buckets are counted by bisection of the sorted times.
    """
    by_source: dict[bytes, list[bytes]] = {}
    item_time, source_name = H_ITEM_TIME, H_SOURCE
    for batch in batches:  # a plain loop: faster than dict() of each batch's headers
        item_ms, source = b"", b"unknown"
        for name, value in batch.headers:
            if name == item_time:
                item_ms = value
            elif name == source_name:
                source = value
        times = by_source.get(source)
        if times is None:
            times = by_source[source] = []
        times.append(item_ms)
    # bytes.isdigit is ASCII only, and int() refuses more than 4,300 digits: whatever
    # passes both checks, int() reads (epoch milliseconds have 13 digits).
    return {
        source: sorted([int(ms) for ms in t if len(ms) <= 18 and ms.isdigit()])
        for source, t in by_source.items()
    }


class Sender:
    """Sends requests until resolved; shares the auth state across concurrent requests."""

    def __init__(
        self,
        client: MParticleClient,
        limiter: AdaptiveRateLimiter,
        *,
        health: Health,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = RETRY_AFTER_MAX_S,
        auth_retry_s: float = 30.0,
        max_retries: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.health = health
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.auth_retry_s = auth_retry_s
        self.max_retries = max_retries
        self._sleep = sleep
        self.auth_failed = False
        self._auth_logged_at = 0.0
        self._delivered_count = metrics.DL_BATCHES.labels("delivered")
        self._e2e: dict[bytes, AgeSeries] = {}
        self._rng = random.Random()
        health.set(AUTH_COMPONENT, True)
        metrics.DL_AUTH_FAILED.set(0)

    async def send(
        self, batches: Sequence[Batch], dead_letter: DeadLetterFn, times: ItemTimes | None = None
    ) -> None:
        """Return once every batch is delivered or dead-lettered.

        ``times`` are the batches' :func:`item_times`, if the caller took them already.

        Raises only CancelledError (shutdown or rebalance), or what ``dead_letter`` raises;
        the caller then must not treat the batches as finished.
        """
        body = request_body(batches)
        # A shared generator: a Random() per request would seed from os.urandom each time.
        backoff = Backoff(
            self.backoff_base_s,
            self.backoff_max_s,
            rng=self._rng,
            retry_after_max_s=self.retry_after_max_s,
        )
        failures = 0
        refused = False  # by a 429: sent first once the pause ends
        while True:
            await self.limiter.acquire(len(batches), first=refused)
            refused = False
            try:
                answer = await self.client.post_bulk(body)
            except AuthError as exc:
                self._auth_refused(exc)
                metrics.DL_RETRIES.labels("auth").inc()
                await self._sleep(self.auth_retry_s)
                continue
            except BadRequest as exc:
                if exc.status not in SPLIT_STATUSES:
                    self._misrouted(exc)
                    metrics.DL_RETRIES.labels("client_error").inc()
                    await self._sleep(self.auth_retry_s)
                    continue
                # mParticle checks credentials first: a 400 means they work.
                self._auth_accepted()
                await self._split(batches, exc, dead_letter)
                return
            except StreamprocError as exc:
                if not exc.retriable:
                    raise
                # 429, 5xx, timeouts, refused or reset connections.
                failures += 1
                if self.max_retries is not None and failures > self.max_retries:
                    await self._give_up(batches, failures, exc, dead_letter)
                    return
                if isinstance(exc, RateLimited):
                    # The API key's limit: every slot waits, in the limiter.
                    self.limiter.pause(self._rate_limited(exc, backoff))
                    refused = True
                else:
                    await self._sleep(self._retry_delay(exc, backoff))
                continue
            self._auth_accepted()
            self.limiter.on_accepted(answer.percent_used)
            self._delivered(batches, times)
            return

    def _rate_limited(self, exc: RateLimited, backoff: Backoff) -> float:
        """The pause a 429 asks for: its Retry-After up to the cap, else the backoff."""
        self.limiter.on_rate_limited()
        delay = backoff.next(exc.retry_after)
        metrics.DL_RETRIES.labels("rate_limited").inc()
        if backoff.over_cap(exc.retry_after):
            log.warning(
                "mParticle asks to wait %.0f s (Retry-After), over mparticle.retry_after_max_s: "
                "waiting %.0f s",
                exc.retry_after,
                delay,
            )
        log.info(
            "mParticle rate limit (429): every request waits %.2f s, then %.0f batches/s",
            delay,
            self.limiter.rate,
        )
        return delay

    def _retry_delay(self, exc: StreamprocError, backoff: Backoff) -> float:
        delay = backoff.next()
        reason = "server_error" if isinstance(exc, ServerError) else "transport"
        metrics.DL_RETRIES.labels(reason).inc()
        log.warning(
            "mParticle request failed (%s); retry %d in %.2f s", exc, backoff.failures, delay
        )
        return delay

    async def _split(
        self, batches: Sequence[Batch], exc: HttpError, dead_letter: DeadLetterFn
    ) -> None:
        if len(batches) == 1:
            log.warning(
                "mParticle refused %s (HTTP %d): dead-lettered", where(batches[0]), exc.status
            )
            await dead_letter(batches[0], "rejected_by_mparticle", f"HTTP {exc.status}: {exc.body}")
            metrics.DL_BATCHES.labels("dead_lettered").inc()
            return
        # Bisect: the halves that mParticle takes are delivered, the rest split further.
        metrics.DL_RETRIES.labels("split").inc()
        middle = len(batches) // 2
        await self.send(batches[:middle], dead_letter)
        await self.send(batches[middle:], dead_letter)

    async def _give_up(
        self,
        batches: Sequence[Batch],
        failures: int,
        exc: StreamprocError,
        dead_letter: DeadLetterFn,
    ) -> None:
        log.error(
            "mParticle request failed %d times (%s): dead-lettering %d batches",
            failures,
            exc,
            len(batches),
        )
        for batch in batches:
            await dead_letter(batch, "retries_exhausted", f"{failures} attempts, last: {exc}")
        metrics.DL_BATCHES.labels("dead_lettered").inc(len(batches))

    def _delivered(self, batches: Sequence[Batch], times: ItemTimes | None) -> None:
        self._delivered_count.inc(len(batches))
        now_ms = time.time() * 1000
        for source, millis in (item_times(batches) if times is None else times).items():
            if millis:  # a series appears with its first observation
                self._histogram(source).observe_ages(now_ms, millis)

    def _histogram(self, source: bytes) -> AgeSeries:
        histogram = self._e2e.get(source)
        if histogram is None:
            label = source.decode("utf-8", "replace")
            histogram = self._e2e[source] = metrics.END_TO_END.labels(label)
        return histogram

    def _misrouted(self, exc: BadRequest) -> None:
        log.error(
            "mParticle answers HTTP %d for %s: check mparticle.base_url; nothing is dropped, "
            "retrying every %g s",
            exc.status,
            mask_url(self.client.url),
            self.auth_retry_s,
        )

    def _auth_refused(self, exc: AuthError) -> None:
        now = time.monotonic()
        if not self.auth_failed or now - self._auth_logged_at >= self.auth_retry_s:
            log.error(
                "mParticle REFUSES THE CREDENTIALS (HTTP %d): delivery is paused, nothing is "
                "dropped or committed; retrying every %g s. Fix mparticle.api_key/api_secret.",
                exc.status,
                self.auth_retry_s,
            )
            self._auth_logged_at = now
        if not self.auth_failed:
            self.auth_failed = True
            metrics.DL_AUTH_FAILED.set(1)
            self.health.set(AUTH_COMPONENT, False, f"mParticle answers HTTP {exc.status}")

    def _auth_accepted(self) -> None:
        if self.auth_failed:
            self.auth_failed = False
            metrics.DL_AUTH_FAILED.set(0)
            self.health.set(AUTH_COMPONENT, True)
            log.warning("mParticle accepts the credentials again: delivery resumes")
