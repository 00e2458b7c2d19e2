"""``streamproc sim ticketure``: Ticketure's Push API, pushing realistic audit flows.

:class:`~streamproc.sim.ticketure_flows.Flows` generates the orders (tickets bought,
paid, redeemed, refunded, moved, voided) as Ticketure reports them.

:class:`TicketureSim` pushes those flows at ``rate`` pushes per second to a receiver, as
our records (``POST /ticketure/events``) or as mParticle batches (``POST /v2/events``),
with basic or HMAC credentials. Like a real push sender it retries 408, 429, 5xx and
transport errors with the same body after a backoff (honouring ``Retry-After``), so a
retry whose first attempt did land makes a duplicate; other 4xx answers are not retried
(resending cannot fix them) and are counted as rejected. ``duplicate_ratio`` re-sends
some accepted pushes on purpose. Counts are in :attr:`TicketureSim.stats`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import msgspec
import orjson

from streamproc.backoff import Backoff
from streamproc.config import Settings
from streamproc.errors import parse_retry_after
from streamproc.formats.ticketure import (
    ENCODER,
)
from streamproc.lifecycle import cancel_and_wait, stop_on_signals, until
from streamproc.sim.credentials import basic, push_signature
from streamproc.sim.pushes import mparticle_batch
from streamproc.sim.ticketure_flows import Flows, Step

log = logging.getLogger(__name__)

Shape = Literal["records", "mparticle"]
PATHS: dict[str, str] = {"records": "/ticketure/events", "mparticle": "/v2/events"}


@dataclass
class SimStats:
    """What the simulator did; ``acknowledged`` holds item ids only with ``keep_ids``."""

    pushes: int = 0  # distinct pushes (bodies) started
    records: int = 0  # records in those pushes
    attempts: int = 0  # HTTP requests sent, retries and deliberate duplicates included
    accepted: int = 0  # pushes answered 2xx (in ``statuses``, every 2xx answer)
    retries: int = 0  # attempts repeated after a retriable answer or transport error
    duplicates: int = 0  # accepted pushes sent again on purpose (duplicate_ratio)
    rejected: int = 0  # pushes answered a 4xx that retrying cannot fix
    failed: int = 0  # pushes given up after max_retries
    statuses: Counter[str] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        by_status = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"pushes {self.pushes} ({self.records} records), attempts {self.attempts}, "
            f"accepted {self.accepted}, retries {self.retries}, duplicates {self.duplicates}, "
            f"rejected {self.rejected}, failed {self.failed}; answers: {by_status or 'none'}"
        )


class TicketureSim:
    """Pushes :class:`Flows` to ``target`` (a base URL); ``await run()``, ``stop()``.

    ``run`` ends after ``count`` pushes, after ``duration_s``, or on ``stop()``; it then
    lets the pushes in flight finish (retries included) for up to ``drain_timeout_s``.
    ``auth`` is ``basic`` (``key``/``secret``), ``hmac`` (``secret`` signs the body into
    ``signature_header``; with ``timestamp_header`` it signs ``<now>.<body>`` and sends
    ``now`` there, afresh for each attempt, as a sender with a replay window must) or
    ``none``. ``rate <= 0`` pushes as fast as ``concurrency``
    allows. ``with_ids=False`` leaves event ids out, so the receiver falls back to content
    hashes. ``keep_ids`` collects the item ids of accepted pushes (tests).
    """

    def __init__(
        self,
        target: str,
        *,
        shape: Shape = "records",
        rate: float = 10.0,
        seed: int = 0,
        auth: Literal["basic", "hmac", "none"] = "basic",
        key: str = "",
        secret: str = "",
        signature_header: str = "X-Signature-SHA256",
        timestamp_header: str | None = None,
        count: int | None = None,
        duration_s: float | None = None,
        concurrency: int = 32,
        max_retries: int = 8,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 10.0,
        request_timeout_s: float = 10.0,
        drain_timeout_s: float = 30.0,
        with_ids: bool = True,
        duplicate_ratio: float = 0.0,
        environment: str = "development",
        keep_ids: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = target.rstrip("/") + PATHS[shape]
        self.shape = shape
        self.rate = rate
        self.auth = auth
        self._key = key
        self._secret = secret
        self.signature_header = signature_header
        self.timestamp_header = timestamp_header
        self.count = count
        self.duration_s = duration_s
        self.concurrency = concurrency
        self.max_retries = max_retries
        self._backoff = (backoff_base_s, backoff_cap_s)
        self.request_timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.with_ids = with_ids
        self.duplicate_ratio = duplicate_ratio
        self.environment = environment
        self.keep_ids = keep_ids
        self.flows = Flows(seed, clock=clock)
        self._rng = random.Random(seed ^ 0x5EED)
        self.stats = SimStats()
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"TicketureSim({self.url!r}, shape={self.shape!r}, auth={self.auth!r})"

    def stop(self) -> None:
        """End ``run`` soon: no new pushes; those in flight finish or are cut at the drain."""
        self._stop.set()

    def body(self, step: Step) -> bytes:
        """The request body for one step, in the configured shape."""
        if not self.with_ids:
            step = [msgspec.structs.replace(r, event_id=None) for r in step]
        if self.shape == "records":
            return ENCODER.encode(step[0] if len(step) == 1 else step)
        batch = mparticle_batch(step[0], environment=self.environment)
        for record in step[1:]:
            batch["events"] += mparticle_batch(record)["events"]
        if self.with_ids:
            # Stable per push, so a retried push is recognisably the same request.
            batch["source_request_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, step[0].event_id or ""))
        return orjson.dumps(batch)

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.auth == "basic":
            headers["Authorization"] = basic(self._key, self._secret)
        elif self.auth == "hmac" and self.timestamp_header:
            now = int(time.time())
            headers[self.timestamp_header] = str(now)
            headers[self.signature_header] = push_signature(self._secret, body, now)
        elif self.auth == "hmac":
            headers[self.signature_header] = push_signature(self._secret, body)
        return headers

    async def run(self) -> SimStats:
        """Push until a bound is reached or ``stop()``; return the counts."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = None if self.duration_s is None else started + self.duration_s
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            next_at = started
            while not self._stop.is_set():
                if self.count is not None and self.stats.pushes >= self.count:
                    break
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                if next_at > now:
                    # Sleep until the next push is due, waking early on stop().
                    try:
                        async with asyncio.timeout(next_at - now):
                            await self._stop.wait()
                    except TimeoutError:
                        pass
                    continue
                next_at = max(next_at + interval, now - 1.0)  # no burst after a stall
                await slots.acquire()
                step = next(self.flows)
                self.stats.pushes += 1
                self.stats.records += len(step)
                task = asyncio.create_task(self._push(http, step))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: slots.release())
            if tasks:
                _done, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
                await cancel_and_wait(pending)
        return self.stats

    async def _push(self, http: aiohttp.ClientSession, step: Step) -> None:
        body = self.body(step)
        backoff = Backoff(*self._backoff, rng=self._rng)
        if await self._send(http, body, backoff):
            self.stats.accepted += 1
            if self.keep_ids:
                self.stats.acknowledged += [r.event_id or "" for r in step]
            if self._rng.random() < self.duplicate_ratio:
                self.stats.duplicates += 1
                await self._send(http, body, Backoff(*self._backoff, rng=self._rng))

    async def _send(self, http: aiohttp.ClientSession, body: bytes, backoff: Backoff) -> bool:
        """POST ``body`` until a 2xx (True), a final 4xx or the last retry (False)."""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.attempts += 1
            retry_after: float | None = None
            try:
                headers = self.headers(body)  # signed afresh: a timestamp must be recent
                async with http.post(self.url, data=body, headers=headers) as response:
                    status = response.status
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    text = await response.text() if status >= 300 else ""
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, text = 0, repr(exc)
            self.stats.statuses[str(status) if status else "error"] += 1
            if 200 <= status < 300:
                return True
            if status and status not in (408, 429) and status < 500:
                self.stats.rejected += 1
                log.warning("push refused with %d: %s", status, text[:300])
                return False
            await asyncio.sleep(backoff.next(retry_after))
        self.stats.failed += 1
        log.warning("push given up after %d attempts", self.max_retries + 1)
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        help="the receiver's base URL (default: http://127.0.0.1:<receiver.port>)",
    )
    parser.add_argument("--shape", choices=("records", "mparticle"), default="records")
    parser.add_argument("--rate", type=float, default=10.0, help="pushes per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, help="stop after this many pushes")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--auth",
        choices=("basic", "hmac", "none"),
        help="default: the first configured receiver sender's method",
    )
    parser.add_argument("--sender", help="use this configured sender's credentials")
    parser.add_argument("--concurrency", type=int, default=32, help="pushes in flight at most")
    parser.add_argument("--max-retries", type=int, default=8)
    parser.add_argument("--no-ids", action="store_true", help="send events without ids")
    parser.add_argument(
        "--duplicates", type=float, default=0.0, help="share of accepted pushes sent twice"
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """Push until ``--count``/``--duration`` or SIGTERM; print the counts; 1 if any push failed."""
    rx = settings.receiver
    senders = [s for s in rx.senders if args.sender in (None, s.name)]
    if args.sender and not senders:
        print(f"no configured sender is named {args.sender!r}", file=sys.stderr)
        return 2
    sender = senders[0] if senders else None
    auth: Literal["basic", "hmac", "none"] = args.auth or (sender.auth if sender else "none")
    sim = TicketureSim(
        args.target or f"http://127.0.0.1:{rx.port}",
        shape=args.shape,
        rate=args.rate,
        seed=args.seed,
        auth=auth,
        key=sender.key if sender else "",
        secret=sender.secret.reveal() if sender else "",
        signature_header=rx.signature_header,
        timestamp_header=rx.timestamp_header if sender and sender.replay_window_s else None,
        count=args.count,
        duration_s=args.duration,
        concurrency=args.concurrency,
        max_retries=args.max_retries,
        with_ids=not args.no_ids,
        duplicate_ratio=args.duplicates,
        environment=settings.mapping.environment,
    )
    stop = stop_on_signals()
    runner = asyncio.create_task(sim.run())
    await until(stop, runner)
    sim.stop()
    stats = await runner
    print(f"sim ticketure: {stats.summary()}", flush=True)
    return 1 if stats.failed or stats.rejected else 0
