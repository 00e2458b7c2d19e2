"""mParticle Events API batches as Ticketure's Push API sends them, to and from our records.

Ticketure's Push API is set up with an mParticle feed's key and secret, so it posts
mParticle batches (``/v2/events``: one; ``/v2/bulkevents``: an array of at most 100).
They are decoded with the ``Posted*`` structs of :mod:`streamproc.formats.mparticle`, so
a batch mParticle's schema refuses is refused here with the field named. What is recognised:

- ``custom_event`` of ``custom_event_type`` ``transaction`` whose ``event_name`` is a
  ticket action (``Purchased``, ``Force_redeemed``... any case): a ``ticket_audit``;
  ``custom_attributes`` are its attributes;
- ``commerce_event`` whose ``product_action.action`` is ``purchase`` or ``refund``: a
  ``gateway_audit``; ``transaction_id`` is the cart id and ``total_amount`` the amount
  (a ``cart_id``/``total_amount`` custom attribute wins, as it keeps the sender's text);
- ``user_identities.email`` and ``mobile_number`` go with every record of the batch.

Anything else valid (other event types, other custom events, unknown actions) is skipped
and counted by the caller: mParticle would accept it, and it is not Ticketure's.
The event's time is its ``timestamp_unixtime_ms``, else the ``ticketure_occured_at``
attribute, else the batch's ``timestamp_unixtime_ms``; an event without one is refused.
Custom attributes our records have no field for (Ticketure may add some) are kept in
``unknown_attributes`` if they are JSON scalars, as mParticle's schema wants them.
The push simulator builds such batches with code of its own (:mod:`streamproc.sim.pushes`).
"""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Any

import msgspec

from streamproc.decoding import decode_json
from streamproc.errors import DecodeError
from streamproc.formats.mparticle import (
    MAX_BULK_BATCHES,
    PostedAttributes,
    PostedBatch,
    PostedCommerceEventData,
    PostedCustomEventData,
    PostedUserIdentities,
    String,
)
from streamproc.formats.ticketure import (
    GATEWAY_ACTIONS,
    TICKET_ACTIONS,
    AnyScalar,
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)
from streamproc.sources.ticketure import ids
from streamproc.sources.ticketure.audit_shape import (
    KNOWN_ATTRIBUTES,
    Accepted,
    Decoded,
    field_of,
    format_ms,
    parse_occurred_at,
    split_attributes,
)

_BATCH = msgspec.json.Decoder(PostedBatch)
_BULK = msgspec.json.Decoder(list[PostedBatch])
_CUSTOM = msgspec.json.Decoder(PostedCustomEventData)
_COMMERCE = msgspec.json.Decoder(PostedCommerceEventData)

# An event found in a batch, before its item id: the record, where it is, and its hints.
_Found = tuple[AuditRecord, int, str, ids.Hints]


def decode(body: bytes, *, bulk: bool, request_id: str | None = None) -> Decoded:
    """Records from a ``/v2/events`` (``bulk=False``) or ``/v2/bulkevents`` body.

    Raises DecodeError naming the first field that mParticle's schema (or our need of an
    event time) refuses, or that cannot be decoded at all; nothing of a request is taken
    unless all of it is valid. ``request_id`` is the request's idempotency key.
    """
    try:
        # JSON is UTF-8 throughout, also in the parts the structs skip (an event's data
        # until its type is known, properties we do not read), which msgspec does not check.
        body.decode()
    except UnicodeDecodeError as exc:
        reason = f"not JSON: invalid UTF-8 at byte {exc.start}"
        raise DecodeError("body", reason, code="not_json") from None
    if bulk:
        batches = decode_json(_BULK, body, "body", invalid=field_of)
    else:
        batches = [decode_json(_BATCH, body, "body", invalid=field_of)]
    if bulk and not batches:
        raise DecodeError("body", "an empty array holds no batches")
    if len(batches) > MAX_BULK_BATCHES:
        raise DecodeError("body", f"{len(batches)} batches; at most {MAX_BULK_BATCHES} allowed")
    out = Decoded([], collections.Counter())
    found: list[_Found] = []
    for b, batch in enumerate(batches):
        found += _batch_records(batch, f"[{b}]." if bulk else "", out)
    with_ids = ids.assign([(record, hints) for record, _, _, hints in found], request_id)
    for record, (_, time_ms, where, _) in zip(with_ids, found, strict=True):
        out.accepted.append(Accepted(record, time_ms, where))
    return out


def _batch_records(batch: PostedBatch, where: str, out: Decoded) -> list[_Found]:
    events = batch.events or []
    identities = batch.user_identities or PostedUserIdentities()
    email, mobile = _text(identities.email), _text(identities.mobile_number)
    request_id = _text(batch.source_request_id)
    found: list[_Found] = []
    for e, event in enumerate(events):
        at = f"{where}events[{e}].data."
        record: AuditRecord | None
        if event.event_type == "custom_event":
            record, message_id = _ticket(event.data, at, batch, email, mobile, out)
        elif event.event_type == "commerce_event":
            record, message_id = _gateway(event.data, at, batch, email, mobile, out)
        else:
            out.skipped["unsupported_event"] += 1
            continue
        if record is None:
            continue
        hints = ids.Hints(message_id, request_id, e if len(events) > 1 else None)
        time_ms = parse_occurred_at(record.occurred_at, at)
        found.append((record, time_ms, at.removesuffix(".data."), hints))
    return found


def _ticket(
    raw: msgspec.Raw,
    at: str,
    batch: PostedBatch,
    email: str | None,
    mobile: str | None,
    out: Decoded,
) -> tuple[AuditRecord | None, str | None]:
    data = _event_data(_CUSTOM, raw, at)
    if data.custom_event_type != "transaction":
        out.skipped["unsupported_event"] += 1
        return None, None
    action = data.event_name.strip().lower().replace(" ", "_").replace("-", "_")
    if action not in TICKET_ACTIONS:
        out.skipped["unknown_action"] += 1
        return None, None
    attrs, unknown = _attributes(data.custom_attributes, "ticket_audit", at)
    occurred_at = _occurred_at(data.timestamp_unixtime_ms, attrs, batch, at)
    record = TicketAudit(
        action=action,  # checked against TICKET_ACTIONS above
        occurred_at=occurred_at,
        email=email,
        mobile_number=mobile,
        attributes=_known(TicketAttributes, attrs, at),
        unknown_attributes=unknown or None,
    )
    return record, data.source_message_id


def _gateway(
    raw: msgspec.Raw,
    at: str,
    batch: PostedBatch,
    email: str | None,
    mobile: str | None,
    out: Decoded,
) -> tuple[AuditRecord | None, str | None]:
    data = _event_data(_COMMERCE, raw, at)
    action = data.product_action.action if data.product_action else None
    if data.product_action is None or action not in GATEWAY_ACTIONS:
        out.skipped["unsupported_event"] += 1
        return None, None
    attrs, unknown = _attributes(data.custom_attributes, "gateway_audit", at)
    if attrs.get("cart_id") is None:
        attrs["cart_id"] = data.product_action.transaction_id
    if attrs.get("total_amount") is None:
        attrs["total_amount"] = data.product_action.total_amount
    occurred_at = _occurred_at(data.timestamp_unixtime_ms, attrs, batch, at)
    record = GatewayAudit(
        action=action,  # checked against GATEWAY_ACTIONS above
        occurred_at=occurred_at,
        email=email,
        mobile_number=mobile,
        attributes=_known(GatewayAttributes, attrs, at),
        unknown_attributes=unknown or None,
    )
    return record, data.source_message_id


def _event_data(decoder: msgspec.json.Decoder[Any], raw: msgspec.Raw, at: str) -> Any:
    """An event's ``data``, decoded by its type; DecodeError naming ``<at>...``."""
    return decode_json(decoder, raw, at.rstrip("."), invalid=lambda exc: field_of(exc, at))


def _attributes(
    custom: PostedAttributes | None, kind: str, at: str
) -> tuple[dict[str, Any], dict[str, AnyScalar]]:
    """(the custom attributes our records have a field for, booleans as text; the others).

    Attributes Ticketure may add later have no field in the record: they are kept as sent.
    """
    known, unknown = split_attributes(
        (custom or {}).items(), KNOWN_ATTRIBUTES[kind], at + "custom_attributes."
    )
    return {k: _text(v) if isinstance(v, bool) else v for k, v in known.items()}, unknown


def _known(struct: type[Any], attrs: dict[str, Any], at: str) -> Any:
    """``attrs`` as ``struct``: DecodeError naming the attribute whose value is no scalar."""
    try:
        return msgspec.convert(attrs, struct)
    except msgspec.ValidationError as exc:
        raise field_of(exc, at + "custom_attributes.") from None


def _occurred_at(
    event_ms: int | None, attrs: dict[str, str | int | float | None], batch: PostedBatch, at: str
) -> str:
    if event_ms is not None:
        return format_ms(event_ms, at + "timestamp_unixtime_ms")
    text = attrs.get("ticketure_occured_at")
    if isinstance(text, str) and text:
        field = at + "custom_attributes.ticketure_occured_at"
        return format_ms(_lenient_ms(text, field), field)
    if batch.timestamp_unixtime_ms is not None:
        return format_ms(batch.timestamp_unixtime_ms, at + "timestamp_unixtime_ms")
    raise DecodeError(
        at + "timestamp_unixtime_ms",
        "the event's time is required (or the custom attribute ticketure_occured_at)",
    )


def _lenient_ms(text: str, field: str) -> int:
    """Ticketure's own time attribute: RFC 3339, or ISO 8601 without an offset (UTC)."""
    try:
        return parse_occurred_at(text, field)
    except DecodeError:
        try:
            parsed = datetime.fromisoformat(text.strip())
        except ValueError:
            raise DecodeError(field, f"{text[:64]!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parse_occurred_at(parsed.isoformat(), field)


def _text(value: String) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
