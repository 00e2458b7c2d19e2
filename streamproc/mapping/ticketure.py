"""Ticketure audit records -> mParticle batches, as Ticketure's own mParticle feed sends them.

- ``ticket_audit`` (nine actions): custom event of type ``transaction`` named after the
  action as mParticle receives it (``Purchased``, ``Force_redeemed``, ``Transfer_to``...),
  every attribute a custom attribute (amounts as numbers), plus ``currency``.
- Attributes a record has no field for (``unknown_attributes``: Ticketure added them) are
  custom attributes of either kind as sent, after all the others, which they never
  replace: past mParticle's 100 attributes they are the ones left out.
- ``gateway_audit`` purchase / refund: commerce event ``purchase`` / ``refund`` with
  ``transaction_id`` = ``cart_id`` and ``total_amount`` (both required), the other
  attributes as custom attributes, currency from config. A refund's ``total_amount`` is
  the refunded amount as a positive number, as mParticle and the tools it forwards to
  read a refund (a negative one would subtract revenue twice); Ticketure's signed value
  is kept as the custom attribute ``signed_total_amount``.

Identities are ``email`` (trimmed and lower-cased: mParticle matches identities exactly,
so one person in two casings would become two profiles) and ``mobile_number`` (trimmed)
when present. The partition key is the user: the email, else the mobile number, else the
order key (ticket
order id or cart id), else the item id. The event's time is ``occurred_at``, else the
``ticketure_occured_at`` (sic) attribute: ISO 8601 (offset optional, UTC assumed) or epoch
seconds / milliseconds. An amount attribute that is not a number is left out and counted.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import msgspec

from streamproc.formats.envelope import Source
from streamproc.formats.mparticle import (
    Batch,
    CommerceEvent,
    CommerceEventData,
    CustomEvent,
    CustomEventData,
    CustomEventType,
    Event,
    ProductAction,
    UserIdentities,
)
from streamproc.formats.ticketure import (
    GATEWAY_ACTIONS,
    TICKET_ACTIONS,
    AuditRecord,
    GatewayAudit,
    TicketAudit,
)
from streamproc.mapping.amounts import AmountError, to_number
from streamproc.mapping.common import (
    BAD_FIELD,
    MISSING_FIELD,
    Built,
    ItemError,
    scalar_pairs,
    text,
)
from streamproc.mapping.context import MappingContext
from streamproc.mapping.ids import source_message_id, source_request_id
from streamproc.mapping.limits import Limits, Scalar

SOURCE = Source.TICKETURE

# Attributes that are amounts or rates: sent to mParticle as numbers.
AMOUNT_ATTRIBUTES = frozenset(
    {
        "price_paid",
        "financial_adjusted_price",
        "financial_adjustment_revenue",
        "ticket_adjusted_value",
        "ticketure_outside_fee_fixed",
        "ticketure_outside_fee_percent",
        "ticketure_inside_fee_fixed",
        "ticketure_inside_fee_percent",
        "total_amount",
    }
)
# Gateway attributes that become product-action fields instead of custom attributes.
_GATEWAY_FIELDS = frozenset({"cart_id", "total_amount"})


def event_name(action: str) -> str:
    """``force_redeemed`` -> ``Force_redeemed``: the action as mParticle receives it."""
    return action[:1].upper() + action[1:].lower()


def item_type(record: AuditRecord) -> str:
    """The metrics label: ``ticket_audit:purchased``, ``gateway_audit:refund``."""
    kind = "ticket_audit" if isinstance(record, TicketAudit) else "gateway_audit"
    return f"{kind}:{record.action}"


def build(record: AuditRecord, item_id: str, ctx: MappingContext, limits: Limits) -> Built:
    """The record's batch; ItemError naming the field if a required one is unusable."""
    attributes: dict[str, Scalar] = msgspec.structs.asdict(record.attributes)
    time_ms = event_time(record.occurred_at, attributes.get("ticketure_occured_at"))
    message_id = source_message_id(SOURCE, item_id, 0)
    unknown = [
        (k, v)
        for k, v in (record.unknown_attributes or {}).items()
        if k not in attributes and k != "currency"
    ]
    event: Event
    if isinstance(record, TicketAudit):
        event = custom_event(
            event_name(record.action),
            "transaction",
            attributes,
            time_ms,
            message_id,
            ctx,
            limits,
            unknown,
        )
    else:
        event = _gateway_event(record, attributes, time_ms, message_id, ctx, limits, unknown)
    return _built(
        event, time_ms, item_id, record.email, record.mobile_number, record.order_key(), ctx
    )


class LooseAudit(msgspec.Struct, kw_only=True):
    """Just enough of a record to see its kind and action when the strict decode fails."""

    type: str
    action: str = ""
    occurred_at: str | int | float | None = None
    email: str | None = None
    mobile_number: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    def is_unknown(self) -> bool:
        """A kind or action this streamproc does not know (as opposed to a broken record)."""
        known = {"ticket_audit": TICKET_ACTIONS, "gateway_audit": GATEWAY_ACTIONS}
        return self.type not in known or self.action not in known[self.type]


def build_other(record: LooseAudit, item_id: str, ctx: MappingContext, limits: Limits) -> Built:
    """A record of a kind or action streamproc does not know, as a custom event ``other``
    named after its action, else its type (``record.type`` must not be blank: the router
    dead-letters such a record).
    """
    pairs = scalar_pairs(record.attributes)
    attributes = dict(pairs)
    time_ms = event_time(record.occurred_at, attributes.get("ticketure_occured_at"))
    action = record.action.strip()
    name = event_name(action) if action else record.type.strip()
    message_id = source_message_id(SOURCE, item_id, 0)
    event = custom_event(name, "other", attributes, time_ms, message_id, ctx, limits)
    order_key = text(attributes.get("ticket_order_id")) or text(attributes.get("cart_id"))
    return _built(event, time_ms, item_id, record.email, record.mobile_number, order_key, ctx)


def custom_event(
    name: str,
    event_type: CustomEventType,
    attributes: dict[str, Scalar],
    time_ms: int,
    message_id: str,
    ctx: MappingContext,
    limits: Limits,
    unknown: list[tuple[str, Scalar]] | None = None,
) -> CustomEvent:
    pairs = [(k, _attribute(k, v, limits)) for k, v in attributes.items()]
    pairs.append(("currency", ctx.ticketure_currency))
    pairs += unknown or []
    return CustomEvent(
        CustomEventData(
            timestamp_unixtime_ms=time_ms,
            source_message_id=message_id,
            event_name=limits.name(name),
            custom_event_type=event_type,
            custom_attributes=limits.attributes(pairs),
        )
    )


def _gateway_event(
    record: GatewayAudit,
    attributes: dict[str, Scalar],
    time_ms: int,
    message_id: str,
    ctx: MappingContext,
    limits: Limits,
    unknown: list[tuple[str, Scalar]],
) -> CommerceEvent:
    cart_id = text(record.attributes.cart_id)
    if cart_id is None:
        raise ItemError(MISSING_FIELD, "attributes.cart_id", "missing: it is the transaction id")
    try:
        total = to_number(record.attributes.total_amount)
    except AmountError as exc:
        raise ItemError(BAD_FIELD, "attributes.total_amount", str(exc)) from None
    if total is None:
        raise ItemError(MISSING_FIELD, "attributes.total_amount", "missing")
    pairs = [
        (k, _attribute(k, v, limits)) for k, v in attributes.items() if k not in _GATEWAY_FIELDS
    ]
    if record.action == "refund":
        pairs.append(("signed_total_amount", total))
        total = abs(total)
    pairs += unknown
    return CommerceEvent(
        CommerceEventData(
            timestamp_unixtime_ms=time_ms,
            source_message_id=message_id,
            currency_code=ctx.ticketure_currency,
            product_action=ProductAction(
                action=record.action, transaction_id=limits.value(cart_id), total_amount=total
            ),
            custom_attributes=limits.attributes(pairs),
        )
    )


def _attribute(name: str, value: Scalar, limits: Limits) -> Scalar:
    if name in AMOUNT_ATTRIBUTES:
        return limits.amount(value)
    return value


def _built(
    event: Event,
    time_ms: int,
    item_id: str,
    email: str | None,
    mobile_number: str | None,
    order_key: str | None,
    ctx: MappingContext,
) -> Built:
    email = email.strip().lower() if email else None
    mobile_number = mobile_number.strip() if mobile_number else None
    identities = UserIdentities(email=email or None, mobile_number=mobile_number or None)
    key = email or mobile_number or order_key or f"item:{item_id}"
    batch = Batch(
        environment=ctx.environment,
        source_request_id=source_request_id(SOURCE, item_id),
        events=[event],
        user_identities=identities if (email or mobile_number) else None,
    )
    return Built(key=key, batch=batch, item_time_ms=time_ms)


_EPOCH = datetime(1970, 1, 1)  # naive, see _iso_ms
_MAX_MS = 253_402_300_800_000  # 10000-01-01: past it no datetime can stand for the time
_SECONDS_BELOW = 100_000_000_000  # a number under this is epoch seconds (until year 5138)


def event_time(occurred_at: Scalar, attribute: Scalar) -> int:
    """Epoch ms of ``occurred_at``, else of the ``ticketure_occured_at`` attribute.

    ItemError naming the first field that is present but unreadable, or ``occurred_at``
    as missing if neither is there.
    """
    bad: tuple[str, Scalar] | None = None
    for field, value in (
        ("occurred_at", occurred_at),
        ("attributes.ticketure_occured_at", attribute),
    ):
        if value is None or value == "":
            continue
        ms = parse_time(value)
        if ms is not None:
            return ms
        bad = bad or (field, value)
    if bad is not None:
        raise ItemError(BAD_FIELD, bad[0], f"{str(bad[1])[:40]!r} is not a time after 1970")
    raise ItemError(MISSING_FIELD, "occurred_at", "missing, and no ticketure_occured_at either")


def parse_time(value: Scalar) -> int | None:
    """ISO 8601 (UTC unless an offset says otherwise) or epoch seconds / ms; None if not."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return _iso_ms(text)
    else:
        try:
            number = float(value)
        except OverflowError:  # an int of over 308 digits (msgspec takes up to 4,300)
            return None
    if not math.isfinite(number) or number < 0:
        return None
    ms = number * 1000 if number < _SECONDS_BELOW else number
    return int(ms) if ms < _MAX_MS else None


def _iso_ms(text: str) -> int | None:
    try:
        # RFC 3339 allows a lower-case "t" and "z"; Python's parser does not.
        when = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    offset = when.utcoffset() or timedelta(0)
    # Naive arithmetic: converting year 1 or 9999 to UTC first could overflow.
    ms = (when.replace(tzinfo=None) - _EPOCH - offset) // timedelta(milliseconds=1)
    return ms if 0 <= ms < _MAX_MS else None
