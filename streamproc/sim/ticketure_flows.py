""":class:`Flows`: a pure, seeded generator of orders as Ticketure's Push API reports them.

Tickets ``purchased`` and the payment captured (``gateway_audit`` ``purchase``, not sent for
$0), then per ticket one fate: redeemed (sometimes twice, sometimes force-redeemed,
sometimes unredeemed and redeemed again), refunded (with a ``gateway_audit`` ``refund``
whose total is negative), moved (``transfer_from`` paired with ``transfer_to`` in one
push), voided (``invalidated``, often ``revalidated``) or left alone. Orders interleave;
one order's events keep their order. The seed fixes every id and value; the clock gives
the times.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import msgspec

from streamproc.formats.ticketure import (
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)

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
