"""``streamproc sim ticketure``: Ticketure's Push API, pushing realistic audit flows.

:class:`Flows` is a pure, seeded generator of orders as Ticketure reports them: tickets
``purchased`` and the payment captured (``gateway_audit`` ``purchase``, not sent for $0),
then per ticket one fate: redeemed (sometimes twice, sometimes force-redeemed, sometimes
unredeemed and redeemed again), refunded (with a ``gateway_audit`` ``refund`` whose total
is negative), moved (``transfer_from`` paired with ``transfer_to`` in one push), voided
(``invalidated``, often ``revalidated``) or left alone. Orders interleave; one order's
events keep their order. The seed fixes every id and value; the clock gives the times.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

import aiohttp
import msgspec
import orjson

from streamproc.backoff import Backoff
from streamproc.config import Settings
from streamproc.errors import parse_retry_after
from streamproc.lifecycle import stop_on_signals
from streamproc.sources.ticketure.auth import basic_header, sign
from streamproc.sources.ticketure.mparticle_shape import encode_batch
from streamproc.sources.ticketure.records import (
    ENCODER,
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)

log = logging.getLogger(__name__)

Shape = Literal["records", "mparticle"]
PATHS: dict[str, str] = {"records": "/ticketure/events", "mparticle": "/v2/events"}
CENT = Decimal("0.01")

# (ticket type, face price); "Member" tickets are free, so their orders may pay $0.
TICKET_TYPES = (("Adult", "25.00"), ("Child", "12.00"), ("Senior", "18.00"), ("Member", "0.00"))
EVENTS = (("Museum Entry", "General"), ("Planetarium Show", "Shows"), ("Dino Exhibit", "Special"))
CARDS = ("Visa", "Mastercard", "Amex")

# A step is what one push carries: one record, or a transfer_from/transfer_to pair.
Step = list[AuditRecord]


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def _time(epoch_s: float) -> str:
    """RFC 3339, second accuracy, as Ticketure's ``ticketure_occured_at``."""
    return datetime.fromtimestamp(int(epoch_s), UTC).isoformat().replace("+00:00", "Z")


class Flows:
    """Steps of interleaved order flows; ``clock`` gives each event's time as it is taken."""

    def __init__(
        self, seed: int = 0, *, active: int = 8, clock: Callable[[], float] = time.time
    ) -> None:
        self._rng = random.Random(seed)
        self._active = active
        self._clock = clock
        self._orders = 0
        self._flows: list[Iterator[Step]] = []

    def __iter__(self) -> Iterator[Step]:
        return self

    def __next__(self) -> Step:
        while True:
            while len(self._flows) < self._active:
                self._flows.append(self._order())
            flow = self._rng.choice(self._flows)
            step = next(flow, None)
            if step is not None:
                return step
            self._flows.remove(flow)

    def _id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _order(self) -> Iterator[Step]:
        """One order's steps, lazily, so every event takes its time when it is pushed."""
        rng = self._rng
        self._orders += 1
        order_id = f"ord-{rng.getrandbits(40):010x}"
        cart_number = f"C{rng.randrange(10**6):06d}"
        email = f"visitor{rng.randrange(10**5)}@example.com" if rng.random() < 0.9 else None
        mobile = f"+1555{rng.randrange(10**7):07d}" if rng.random() < 0.5 else None
        channel = rng.choice(("web", "web", "pos", "cms"))
        event_name, category = rng.choice(EVENTS)
        visit = datetime(2025, 6, 1, 9, tzinfo=UTC) + timedelta(
            days=rng.randrange(120), hours=rng.randrange(8)
        )
        fee_fixed = Decimal("1.50") if channel == "web" else Decimal("0.00")
        fee_percent = rng.choice((Decimal("0"), Decimal("8.875")))
        inside = rng.random() < 0.2
        tickets: list[TicketAttributes] = []
        for _ in range(rng.randint(1, 4)):
            ticket_type, face = rng.choice(TICKET_TYPES)
            face_price = Decimal(face)
            adjusted = face_price * Decimal("0.9") if rng.random() < 0.2 else face_price
            paid = adjusted + fee_fixed + adjusted * fee_percent / 100 if adjusted else Decimal(0)
            tickets.append(
                TicketAttributes(
                    price_paid=_money(paid),
                    ticket_type=ticket_type,
                    cart_number=cart_number,
                    channel_id=channel,
                    financial_adjusted_price=_money(adjusted),
                    financial_adjustment_revenue=_money(adjusted),
                    ticket_adjusted_value=_money(adjusted),
                    seller="Main Box Office" if channel == "pos" else "Online",
                    event_session_start=_time(visit.timestamp()),
                    event_session_end=_time(visit.timestamp() + 3600),
                    ticketure_event_category=category,
                    ticketure_event_name=event_name,
                    ticket_group=rng.choice(("Individual", "Group")),
                    ticket_order_id=order_id,
                    ticket_order_number=str(100000 + self._orders),
                    ticketure_outside_fee_fixed=_money(fee_fixed) if adjusted else "0.00",
                    ticketure_outside_fee_percent=str(fee_percent) if adjusted else "0",
                    ticketure_inside_fee_fixed="0.50" if inside and adjusted else None,
                    ticketure_inside_fee_percent=None,
                )
            )
        gateway = rng.choice(("stripe", "stripe", "cash"))
        card = rng.choice(CARDS)
        token = f"ch_{rng.getrandbits(64):016x}"

        def ticket(action: str, attrs: TicketAttributes) -> TicketAudit:
            now = self._clock()
            return TicketAudit(
                action=action,  # type: ignore[arg-type]  # one of TICKET_ACTIONS
                occurred_at=_time(now),
                event_id=self._id(),
                email=email,
                mobile_number=mobile,
                attributes=msgspec.structs.replace(attrs, ticketure_occured_at=_time(now)),
            )

        def payment(action: str, total: Decimal) -> GatewayAudit:
            refund = action == "refund"
            return GatewayAudit(
                action=action,  # type: ignore[arg-type]  # purchase or refund
                occurred_at=_time(self._clock()),
                event_id=self._id(),
                email=email,
                mobile_number=mobile,
                attributes=GatewayAttributes(
                    cart_id=order_id,
                    cart_number=cart_number,
                    gateway_id=gateway,
                    gl_code="4000-10" if gateway == "stripe" else "4000-20",
                    gateway_payment_identifier=f"{rng.randrange(10**4):04d}"
                    if gateway == "stripe"
                    else None,
                    gateway_payment_name=card if gateway == "stripe" else "Cash",
                    gateway_token=f"re_{rng.getrandbits(64):016x}" if refund else token,
                    gateway_related_token=token if refund else None,
                    total_amount=_money(-total if refund else total),
                ),
            )

        for attrs in tickets:
            yield [ticket("purchased", attrs)]
        total = sum((Decimal(str(t.price_paid)) for t in tickets), Decimal(0))
        if total > 0:  # $0 payments are not sent
            yield [payment("purchase", total)]
        for attrs in tickets:
            yield from self._fate(rng, attrs, ticket, payment)

    def _fate(
        self,
        rng: random.Random,
        attrs: TicketAttributes,
        ticket: Callable[[str, TicketAttributes], TicketAudit],
        payment: Callable[[str, Decimal], GatewayAudit],
    ) -> Iterator[Step]:
        roll = rng.random()
        if roll < 0.55:  # redeemed, sometimes forced, twice, or undone and redone
            yield [ticket("force_redeemed" if rng.random() < 0.1 else "redeemed", attrs)]
            if rng.random() < 0.15:
                yield [ticket("redeemed", attrs)]
            if rng.random() < 0.1:
                yield [ticket("unredeemed", attrs)]
                yield [ticket("redeemed", attrs)]
        elif roll < 0.7:
            yield [ticket("refunded", attrs)]
            paid = Decimal(str(attrs.price_paid))
            if paid > 0:
                yield [payment("refund", paid)]
        elif roll < 0.82:
            moved = msgspec.structs.replace(
                attrs,
                event_session_start=_shift(attrs.event_session_start, days=1),
                event_session_end=_shift(attrs.event_session_end, days=1),
            )
            yield [ticket("transfer_from", attrs), ticket("transfer_to", moved)]
            if rng.random() < 0.5:
                yield [ticket("redeemed", moved)]
        elif roll < 0.9:
            yield [ticket("invalidated", attrs)]
            if rng.random() < 0.6:
                yield [ticket("revalidated", attrs)]


def _shift(value: str | int | float | None, *, days: int) -> str | None:
    if not isinstance(value, str):
        return None
    when = datetime.fromisoformat(value.replace("Z", "+00:00")) + timedelta(days=days)
    return _time(when.timestamp())


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
    ``signature_header``) or ``none``. ``rate <= 0`` pushes as fast as ``concurrency``
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
        batch = encode_batch(step[0], environment=self.environment)
        for record in step[1:]:
            batch["events"] += encode_batch(record)["events"]
        if self.with_ids:
            # Stable per push, so a retried push is recognisably the same request.
            batch["source_request_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, step[0].event_id or ""))
        return orjson.dumps(batch)

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.auth == "basic":
            headers["Authorization"] = basic_header(self._key, self._secret)
        elif self.auth == "hmac":
            headers[self.signature_header] = sign(self._secret, body)
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
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        return self.stats

    async def _push(self, http: aiohttp.ClientSession, step: Step) -> None:
        body = self.body(step)
        headers = self.headers(body)
        backoff = Backoff(*self._backoff, rng=self._rng)
        if await self._send(http, body, headers, backoff):
            self.stats.accepted += 1
            if self.keep_ids:
                self.stats.acknowledged += [r.event_id or "" for r in step]
            if self._rng.random() < self.duplicate_ratio:
                self.stats.duplicates += 1
                await self._send(http, body, headers, Backoff(*self._backoff, rng=self._rng))

    async def _send(
        self, http: aiohttp.ClientSession, body: bytes, headers: dict[str, str], backoff: Backoff
    ) -> bool:
        """POST ``body`` until a 2xx (True), a final 4xx or the last retry (False)."""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.attempts += 1
            retry_after: float | None = None
            try:
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
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    sim.stop()
    stopper.cancel()
    stats = await runner
    print(f"sim ticketure: {stats.summary()}", flush=True)
    return 1 if stats.failed or stats.rejected else 0
