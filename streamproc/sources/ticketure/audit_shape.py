"""The body of ``POST /ticketure/events``: one audit record or a JSON array of them.

The shape is :mod:`streamproc.formats.ticketure`, published as JSON Schema in
``schemas/ticketure/events.schema.json``. Beyond what the structs check, ``occurred_at``
must be an RFC 3339 date-time (with an offset, as the schema's ``date-time`` format says)
and ``event_id``, when given, a non-empty string of at most 256 characters. An attribute
the structs have no field for (Ticketure may add some) is taken if it is a JSON scalar,
and kept in ``unknown_attributes``. Every failure, whatever the cause (not JSON, invalid
UTF-8, nesting past the decoder's depth, a wrong type or size), is a :class:`DecodeError`
naming the field (``[2].attributes.price_paid``) and the reason.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
import rfc3339_validator

from streamproc.decoding import decode_json
from streamproc.errors import DecodeError
from streamproc.formats.ticketure import (
    AnyScalar,
    AuditRecord,
    GatewayAttributes,
    TicketAttributes,
)
from streamproc.sources.ticketure import ids

_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_EPOCH = datetime(1970, 1, 1)  # naive: the arithmetic below never overflows
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


class Accepted(NamedTuple):
    """A record ready for Kafka: ``event_id`` is its item id, ``time_ms`` its own time,
    ``where`` the event's place in the body (``[1]``, ``[0].events[2]``; ``""`` alone)."""

    record: AuditRecord
    time_ms: int
    where: str = ""


class Decoded(NamedTuple):
    """The records of a request and the events skipped, counted by reason."""

    accepted: list[Accepted]
    skipped: collections.Counter[str]


# The attributes each kind has a field for, by the ``type`` that names the kind.
KNOWN_ATTRIBUTES: Mapping[str, frozenset[str]] = {
    "ticket_audit": frozenset(f.name for f in msgspec.structs.fields(TicketAttributes)),
    "gateway_audit": frozenset(f.name for f in msgspec.structs.fields(GatewayAttributes)),
}
_NAME_IN_FIELD = 100  # characters of a peer's attribute name kept in a field path
_DOCUMENTS = msgspec.json.Decoder(dict[str, Any] | list[Any])
_RECORDS = msgspec.json.Decoder(AuditRecord | list[AuditRecord])
_UNKNOWN_ATTRIBUTES = b"unknown_attributes"
_NEW_ATTRIBUTE = re.compile(r"Object contains unknown field `.*` - at `\$(\[\d+\])?\.attributes`")


def parse_occurred_at(text: str, field: str = "occurred_at") -> int:
    """Epoch milliseconds of an RFC 3339 date-time; DecodeError naming ``field`` if not one."""
    if not rfc3339_validator.validate_rfc3339(text):
        raise DecodeError(field, f"{text[:64]!r} is not an RFC 3339 date-time with an offset")
    try:
        parsed = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise DecodeError(field, f"{text[:64]!r} is not a valid time ({exc})") from None
    offset = parsed.utcoffset() or timedelta(0)
    # Subtracting naive datetimes stays in range for year 1 or 9999 with any offset,
    # where converting to UTC first could overflow.
    delta = parsed.replace(tzinfo=None) - _EPOCH - offset
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_ms(ms: int, field: str = "timestamp_unixtime_ms") -> str:
    """RFC 3339 in UTC (``Z``) of epoch milliseconds; seconds only when ``ms`` is whole."""
    try:
        when = _EPOCH_UTC + timedelta(milliseconds=ms)
    except OverflowError:
        raise DecodeError(field, f"{ms} is out of range for a time") from None
    spec = "seconds" if ms % 1000 == 0 else "milliseconds"
    return when.isoformat(timespec=spec).replace("+00:00", "Z")


def field_of(exc: msgspec.ValidationError, prefix: str = "") -> DecodeError:
    """msgspec's "reason - at `$.a[0].b`" as DecodeError("<prefix>a[0].b", reason).

    A missing or unknown field is named itself: "Object missing required field `x`" at
    ``$.a`` is field ``a.x``, reason "required".
    """
    message = str(exc)
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        reason, where = message, ""
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    for pattern, why in ((_MISSING, "required"), (_UNKNOWN, "unknown field")):
        named = pattern.fullmatch(reason)
        if named:
            path = f"{path}.{named.group(1)}" if path else named.group(1)
            reason = why
    field = (prefix + path).rstrip(".") if path else prefix.rstrip(".")
    return DecodeError(field or "body", reason)


def split_attributes(
    attributes: Iterable[tuple[str, Any]], known: frozenset[str], at: str
) -> tuple[dict[str, Any], dict[str, AnyScalar]]:
    """(the attributes in ``known``, the others) of ``attributes``, in their order.

    Known values are left for the record's struct to check; any other must be a JSON
    scalar (DecodeError naming ``<at><name>`` if not), as mParticle takes no nested values.
    """
    known_values: dict[str, Any] = {}
    unknown: dict[str, AnyScalar] = {}
    for name, value in attributes:
        if name in known:
            known_values[name] = value
        elif value is None or isinstance(value, str | int | float | bool):
            unknown[name] = value
        else:
            raise DecodeError(
                at + name[:_NAME_IN_FIELD], "must be a string, number, boolean or null"
            )
    return known_values, unknown


def decode(body: bytes, request_id: str | None = None) -> Decoded:
    """What the receiver writes for this body: every record checked, with its item id.

    ``request_id`` is the request's idempotency key (see :mod:`.ids`). Nothing of a body
    is taken unless all of it is valid.
    """
    accepted = _typed(body) if _UNKNOWN_ATTRIBUTES not in body else None
    if accepted is None:  # attributes without a field, or unknown_attributes sent
        document = decode_json(_DOCUMENTS, body, "body", invalid=field_of)
        batched = isinstance(document, list)
        documents = document if isinstance(document, list) else [document]
        if not documents:
            raise DecodeError("body", "an empty array holds no records")
        accepted = [_record(d, f"[{i}]." if batched else "") for i, d in enumerate(documents)]
    with_ids = ids.assign([(a.record, ids.Hints()) for a in accepted], request_id)
    return Decoded(
        [a._replace(record=r) for a, r in zip(accepted, with_ids, strict=True)],
        collections.Counter(),
    )


def _typed(body: bytes) -> list[Accepted] | None:
    """The body's records decoded straight into the structs, three times faster than
    through :func:`_record`; None if a record has an attribute without a field (the
    structs refuse it, :func:`_record` keeps it)."""
    try:
        decoded = decode_json(_RECORDS, body, "body", invalid=_unless_new_attribute)
    except _NewAttribute:
        return None
    batched = isinstance(decoded, list)
    records = decoded if isinstance(decoded, list) else [decoded]
    if not records:
        raise DecodeError("body", "an empty array holds no records")
    return [_checked(r, f"[{i}]." if batched else "") for i, r in enumerate(records)]


class _NewAttribute(Exception):
    pass


def _unless_new_attribute(exc: msgspec.ValidationError) -> DecodeError:
    if _NEW_ATTRIBUTE.fullmatch(str(exc)):
        raise _NewAttribute
    return field_of(exc)


def _record(doc: Any, where: str) -> Accepted:
    """One record of the body (``where`` its field prefix), checked, without its item id."""
    unknown: dict[str, AnyScalar] = {}
    if isinstance(doc, dict):
        if "unknown_attributes" in doc:  # the receiver's to set, from ``attributes``
            raise DecodeError(where + "unknown_attributes", "unknown field")
        known = KNOWN_ATTRIBUTES.get(str(doc.get("type")))
        attributes = doc.get("attributes")
        if known is not None and isinstance(attributes, dict):
            kept, unknown = split_attributes(attributes.items(), known, where + "attributes.")
            doc = {**doc, "attributes": kept}
    try:
        record: AuditRecord = msgspec.convert(doc, AuditRecord)
    except msgspec.ValidationError as exc:
        raise field_of(exc, where) from None
    if unknown:
        record = msgspec.structs.replace(record, unknown_attributes=unknown)
    return _checked(record, where)


def _checked(record: AuditRecord, where: str) -> Accepted:
    """What the structs cannot check: the event id's length, the time's format."""
    if record.event_id is not None and not 0 < len(record.event_id) <= ids.MAX_ID_LENGTH:
        raise DecodeError(where + "event_id", f"must hold 1 to {ids.MAX_ID_LENGTH} characters")
    time_ms = parse_occurred_at(record.occurred_at, where + "occurred_at")
    return Accepted(record, time_ms, where.rstrip("."))
