"""One account's polling loop: fetch a page, commit its items and the cursor together.

A session starts by initialising the account's transactional producer (``transactional_id``
stable per account), which fences any older poller of the account and settles its open
transaction, and only then reads the cursor back (``read_committed``): what the topic holds
and where the cursor says it is can never disagree. Each page's items, its dead letters
and the new cursor are one Kafka transaction; if that fails in any way the session is
thrown away and rebuilt from Kafka, because a commit that timed out may still have landed.

Faults: 429 waits ``Retry-After`` (capped at ``retry_after_max_s``); 5xx, timeouts, refused
connections and malformed pages (see ``page.build`` for the checks) back off exponentially
with jitter up to ``backoff_max_s``; 401/403 log an error naming the account (never the
secret) and retry every ``auth_retry_s``. A page that brings nothing new is followed by
the poll interval's wait, whatever its ``moreresults`` says. Each failure is counted; the
first of a burst is logged (then one line a minute while it lasts). A fenced producer
means another replica owns the account now: :class:`Fenced` is raised and the caller
decides.

Lag never waits for a success: the gauges are read at scrape time as now minus the last
good progress (the newest item fetched, or the time of the last poll that found nothing
more), so they grow through any outage, and ``/readyz`` reports the account once no
request has succeeded for ``stalled_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from streamproc import dlq, kafka, metrics
from streamproc.backoff import Backoff
from streamproc.config import Settings, TicketmaticAccount
from streamproc.errors import (
    AuthError,
    BadRequest,
    DecodeError,
    RateLimited,
    ServerError,
    StreamprocError,
    TransportError,
    peer_text,
)
from streamproc.formats.ticketmatic import Cursor, EventstreamPage, later, position_key, ts_ms
from streamproc.health import Health
from streamproc.lifecycle import until
from streamproc.sources.ticketmatic import cursor as cursors
from streamproc.sources.ticketmatic.client import EventstreamClient
from streamproc.sources.ticketmatic.page import INVALID_ITEM, MALFORMED_REASONS, PageRecords, build
from streamproc.sources.ticketmatic.writer import PageWriter
from streamproc.topics import Topics

log = logging.getLogger(__name__)
T = TypeVar("T")

KAFKA_BATCH_BYTES = 512 * 1024  # the producer's record batches (max_batch_size)
LOG_REPEAT_S = 60.0  # a failure that goes on is logged again this often

_OUTCOMES: dict[type[StreamprocError], str] = {
    RateLimited: "rate_limited",
    ServerError: "server_error",
    TransportError: "transport_error",
    AuthError: "auth_error",
    BadRequest: "client_error",
    DecodeError: "malformed",
}


class Fenced(Exception):
    """Another poller initialised this account's transactional id: it owns the account."""


def transactional_id(settings: Settings, account: str) -> str:
    """Stable per account (and topic prefix), so that a new owner fences the old one."""
    return f"streamproc-poll-{settings.topic_prefix}{account}"


class AccountPoller:
    """Polls one Ticketmatic account into Kafka until ``stop`` is set.

    Durations are parameters so tests run without real waits. ``run`` returns when
    ``stop`` is set (after finishing the transaction in flight); it raises :class:`Fenced`
    when another poller took the account over.
    """

    def __init__(
        self,
        settings: Settings,
        account: TicketmaticAccount,
        client: EventstreamClient,
        *,
        poller_id: str,
        health: Health | None = None,
        poll_interval_s: float | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float | None = None,
        auth_retry_s: float | None = None,
        retention_s: float | None = None,
        cursor_refresh_s: float = 60.0,
        restore_timeout_s: float = 60.0,
    ) -> None:
        tm = settings.ticketmatic
        self.settings = settings
        self.account = account
        self.client = client
        self.poller_id = poller_id
        self.health = health or Health()
        self.topics = Topics.for_prefix(settings.topic_prefix)
        self.poll_interval_s = tm.poll_interval_s if poll_interval_s is None else poll_interval_s
        self.backoff = Backoff(
            backoff_base_s,
            tm.backoff_max_s if backoff_max_s is None else backoff_max_s,
            retry_after_max_s=tm.retry_after_max_s,
        )
        self.auth_retry_s = tm.auth_retry_s if auth_retry_s is None else auth_retry_s
        self.retention_s = tm.retention_s if retention_s is None else retention_s
        self.stalled_after_s = tm.stalled_after_s
        self.max_skew_ms = int(tm.max_future_skew_s * 1000)
        self.cursor_refresh_s = cursor_refresh_s
        self.restore_timeout_s = restore_timeout_s
        self.eventtypes = ",".join(tm.eventtypes)
        self.cursor: Cursor | None = None
        self.items_written = 0
        self._persisted_known_ms = 0
        self._component = f"ticketmatic:{account.name}"
        # Last good progress (epoch ms, None before the first) and last successful request
        # (epoch s). Until they are known, both count from the start: a lower bound that
        # still grows in an outage.
        self._started_ms = _now_ms()
        self._progress_ms: int | None = None
        self._success_s = self._started_ms / 1000
        self._last_failure = "none yet"
        self._logged: tuple[str, float] | None = None  # (what, when) of the last failure log
        self._failed_since_success = 0
        self._expose()

    def _expose(self) -> None:
        """Gauges read at scrape time, and counters that exist before their first event."""
        name = self.account.name
        metrics.TM_LAG.labels(name).set_function(self.lag_s)
        metrics.TM_HEADROOM.labels(name).set_function(lambda: self.retention_s - self.lag_s())
        metrics.TM_SINCE_SUCCESS.labels(name).set_function(self.since_success_s)
        metrics.TM_GAPS.labels(name)
        metrics.TM_GAP_SECONDS.labels(name)
        metrics.TM_DUPLICATES.labels(name)
        for outcome in ("ok", "empty", *_OUTCOMES.values()):
            metrics.TM_POLLS.labels(name, outcome)
        for reason in MALFORMED_REASONS:
            metrics.TM_MALFORMED.labels(name, reason)

    def lag_s(self) -> float:
        """Now minus the last good progress: the newest item fetched, or the last poll
        that found nothing more."""
        return max(0.0, time.time() - (self._progress_ms or self._started_ms) / 1000)

    def _progress(self, known_ms: int) -> None:
        if known_ms:
            self._progress_ms = max(self._progress_ms or 0, known_ms)

    def since_success_s(self) -> float:
        return max(0.0, time.time() - self._success_s)

    def _stalled(self) -> str | None:
        """The readiness reason once no request has succeeded for ``stalled_after_s``."""
        since = self.since_success_s()
        if since < self.stalled_after_s:
            return None
        return f"no successful eventstream request for {since:.0f} s (last: {self._last_failure})"

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; rebuild the Kafka session after any Kafka failure."""
        self.health.set(self._component, False, "starting")
        self.health.watch(self._component, self._stalled)
        try:
            await self._sessions(stop)
        finally:
            self.health.forget(self._component)

    async def _sessions(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            producer = kafka.producer(
                self.settings.kafka,
                transactional_id=transactional_id(self.settings, self.account.name),
                # A page is up to ~1.5 MB: big batches send it in a request or two
                # instead of one 16 KB batch per partition per round trip.
                max_batch_size=KAFKA_BATCH_BYTES,
            )
            delay = 0.0
            try:
                # Connecting, fencing and restoring may wait on Kafka: stop interrupts them.
                await _race(self._start_session(producer), stop)
                await self._poll(producer, stop)
            except _Stopped:
                pass
            except (ProducerFenced, InvalidProducerEpoch) as exc:
                self.health.set(self._component, True, "owned by another poller")
                raise Fenced(self.account.name) from exc
            except (KafkaError, TimeoutError) as exc:
                delay = self.backoff.next()
                log.warning(
                    "ticketmatic %s: Kafka failed (%s: %s); restarting from the committed "
                    "cursor in %.1f s",
                    self.account.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self.health.set(self._component, False, f"Kafka: {type(exc).__name__}")
            finally:
                await self._close(producer)
            await _sleep(delay, stop)

    async def _start_session(self, producer: AIOKafkaProducer) -> None:
        """Init the producer (fencing older owners), then read the cursor back."""
        await producer.start()
        # An empty transaction waits for InitProducerId: from here on the previous
        # owner can no longer commit and its open transaction is settled.
        await producer.begin_transaction()
        await producer.abort_transaction()
        partitions = await producer.partitions_for(self.topics.cursors)
        restored = await cursors.restore(
            self.settings, self.topics.cursors, partitions, self.restore_timeout_s
        )
        self.cursor = restored.get(self.account.name)
        if self.cursor is None and self.account.start_ts:
            # A configured start is a position too: if it is past the retention, say so.
            self.cursor = Cursor(known_ms=ts_ms(self.account.start_ts))
        self._persisted_known_ms = self.cursor.known_ms if self.cursor else 0
        if self.cursor is not None:
            known = self.cursor.known_ms
            if not known and self.cursor.id:
                known = position_key(self.cursor.id)[0]
            # A restored cursor says how far the stream was read, before this process.
            self._progress(known)
        log.info(
            "ticketmatic %s: polling from %s",
            self.account.name,
            self._position() or self.account.start_ts or "the oldest item kept",
        )

    async def _poll(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        writer = PageWriter(producer, self.topics.cursors, self.account.name)
        ahead: tuple[asyncio.Task[EventstreamPage], int] | None = None
        try:
            while not stop.is_set():
                self._check_retention()
                fetch, asof_ms = ahead or (self._fetch(self.cursor), _now_ms())
                ahead = None
                try:
                    page = await _race(fetch, stop)
                    built = build(
                        page,
                        account=self.account.name,
                        cursor=self.cursor,
                        topics=self.topics,
                        received_ms=_now_ms(),
                        asof_ms=asof_ms,
                        poller=self.poller_id,
                        max_skew_ms=self.max_skew_ms,
                        filtered=bool(self.eventtypes),
                    )
                except StreamprocError as exc:
                    await _sleep(self._failed(exc), stop)
                    continue
                # Only new items are a reason to ask again at once: an empty page whose
                # nextid creeps forward would otherwise be asked for in a tight loop.
                more = page.moreresults and bool(built.items or built.dead_lettered)
                if more:
                    # Fetch the next page while this one commits: reading is harmless, and
                    # if the commit fails the page fetched ahead is thrown away.
                    ahead = (self._fetch(built.cursor), _now_ms())
                if self._must_write(built):
                    await self._commit(writer, built)
                else:
                    self.cursor = built.cursor  # written with the next records or refresh
                self._succeeded(built)
                if not more:
                    await _sleep(self.poll_interval_s, stop)
        finally:
            if ahead is not None:
                ahead[0].cancel()
                with contextlib.suppress(asyncio.CancelledError, StreamprocError):
                    await ahead[0]

    def _fetch(self, cursor: Cursor | None) -> asyncio.Task[EventstreamPage]:
        return asyncio.create_task(self.client.fetch(self.account, self._params(cursor)))

    # --- one page -----------------------------------------------------------------------

    def _position(self, cursor: Cursor | None = None) -> str | None:
        cursor = cursor or self.cursor
        return later(cursor.next, cursor.id) if cursor else None

    def _params(self, cursor: Cursor | None) -> dict[str, str]:
        params: dict[str, str] = {}
        position = self._position(cursor)
        if position:
            params["id"] = position
        elif self.account.start_ts:
            params["ts"] = self.account.start_ts
        if self.eventtypes:
            params["eventtypes"] = self.eventtypes
        return params

    def _must_write(self, built: PageRecords) -> bool:
        if built.records:
            return True
        # A cursor that moved without items (nextid skipped ahead) or a newer known_ms is
        # written now and then, not per page: a restart then asks again for a range that
        # holds nothing new, and measures retention gaps truly.
        return (built.moved or built.cursor.id is not None) and (
            built.cursor.known_ms - self._persisted_known_ms >= self.cursor_refresh_s * 1000
        )

    async def _commit(self, writer: PageWriter, built: PageRecords) -> None:
        """The page's records and the cursor in one transaction (KafkaError if it fails)."""
        await writer.commit(built.records, built.cursor)
        self.cursor = built.cursor
        self._persisted_known_ms = built.cursor.known_ms

    def _succeeded(self, built: PageRecords) -> None:
        name = self.account.name
        if self._failed_since_success:
            log.info(
                "ticketmatic %s: eventstream answers again after %d failed request(s) (%s)",
                name,
                self._failed_since_success,
                self._last_failure,
            )
        self._failed_since_success = 0
        self._logged = None
        self.backoff.reset()
        self._success_s = time.time()
        self._progress(built.cursor.known_ms)
        self.items_written += built.items
        if built.dead_lettered:  # committed with the page
            dlq.counted("poll", "ticketmatic", INVALID_ITEM, built.dead_lettered)
        if built.duplicates:
            metrics.TM_DUPLICATES.labels(name).inc(built.duplicates)
        metrics.TM_POLLS.labels(name, "ok" if built.items else "empty").inc()
        if built.items:
            metrics.TM_ITEMS.labels(name).inc(built.items)
            metrics.ITEMS_IN.labels("ticketmatic").inc(built.items)
        self.health.set(self._component, True, "")

    def _failed(self, exc: StreamprocError) -> float:
        """Count and log a failed request; the delay before the next one."""
        outcome = next((o for cls, o in _OUTCOMES.items() if isinstance(exc, cls)), "error")
        name = self.account.name
        metrics.TM_POLLS.labels(name, outcome).inc()
        what = outcome
        if isinstance(exc, DecodeError):
            metrics.TM_MALFORMED.labels(name, exc.code).inc()
            what = f"malformed page ({exc.code})"
        self._failed_since_success += 1
        self._last_failure = what
        if isinstance(exc, AuthError | BadRequest):
            refused = f"{'credentials' if isinstance(exc, AuthError) else 'request'} refused"
            refused += f" (HTTP {exc.status})"
            self._log_failure(
                logging.ERROR,
                what,
                "ticketmatic %s: %s; check this account's access key, secret key and name "
                "(answer: %s); retrying in %.0f s",
                name,
                refused,
                peer_text(exc.body),
                self.auth_retry_s,
            )
            self.health.set(self._component, False, refused)
            return self.auth_retry_s
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
        delay = self.backoff.next(retry_after)
        if self.backoff.over_cap(retry_after):
            log.warning(
                "ticketmatic %s: Retry-After of %.0f s is over ticketmatic.retry_after_max_s; "
                "waiting %.0f s",
                name,
                retry_after,
                delay,
            )
        self._log_failure(
            logging.WARNING,
            what,
            "ticketmatic %s: %s (%s); retrying in %.1f s",
            name,
            what,
            exc,
            delay,
        )
        return delay

    def _log_failure(self, level: int, what: str, message: str, *args: object) -> None:
        """Log the first failure of a burst, a new kind of failure, or one a minute."""
        now = time.monotonic()
        last = self._logged
        if last is not None and last[0] == what and now - last[1] < LOG_REPEAT_S:
            log.debug(message, *args)
            return
        self._logged = (what, now)
        log.log(level, message, *args)

    def _check_retention(self) -> None:
        """Count and log a gap when the stream may have lost items past the retention."""
        if self.cursor is None:
            return
        known = self.cursor.known_ms
        if not known and self.cursor.id:
            known = position_key(self.cursor.id)[0]
        horizon = _now_ms() - int(self.retention_s * 1000)
        if not known or known >= horizon:
            return
        gap_s = (horizon - known) / 1000
        metrics.TM_GAPS.labels(self.account.name).inc()
        metrics.TM_GAP_SECONDS.labels(self.account.name).inc(gap_s)
        log.warning(
            "ticketmatic %s: DATA LOSS: the stream was last read %.0f s ago, past Ticketmatic's "
            "%.0f s retention; up to %.0f s of items were dropped before they could be "
            "fetched (cursor %s); carrying on from the oldest item kept",
            self.account.name,
            (_now_ms() - known) / 1000,
            self.retention_s,
            gap_s,
            self._position(),
        )
        self.cursor.known_ms = horizon
        self._progress(horizon)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except KafkaError as exc:
            log.debug("ticketmatic %s: closing the producer: %s", self.account.name, exc)


# --- helpers ----------------------------------------------------------------------------


class _Stopped(Exception):
    """``stop`` was set while waiting."""


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _sleep(delay_s: float, stop: asyncio.Event) -> None:
    """Sleep ``delay_s`` or until ``stop`` is set."""
    await until(stop, seconds=max(0.0, delay_s))


async def _race(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """``aw``'s result (or its exception); :class:`_Stopped` if ``stop`` comes first.

    Only requests and connecting are interrupted this way; a transaction is finished.
    """
    task = asyncio.ensure_future(aw)
    try:
        ended = await until(stop, task)
    except asyncio.CancelledError:
        task.cancel()  # the caller is being cancelled: take the work down with it
        raise
    if not ended:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamprocError, KafkaError):
            await task
        raise _Stopped
    return task.result()
