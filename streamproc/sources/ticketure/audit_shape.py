"""The body of ``POST /ticketure/events``: one audit record or a JSON array of them.

The shape is :mod:`streamproc.sources.ticketure.records`, published as JSON Schema in
``schemas/ticketure/events.schema.json``. Beyond what the structs check, ``occurred_at``
must be an RFC 3339 date-time (with an offset, as the schema's ``date-time`` format says)
and ``event_id``, when given, a non-empty string of at most 256 characters. Every failure
is a :class:`DecodeError` naming the field (``[2].attributes.price_paid``) and the reason.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec
import rfc3339_validator

from streamproc.errors import DecodeError
from streamproc.sources.ticketure import ids
from streamproc.sources.ticketure.records import RECORDS_DECODER, AuditRecord

_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_EPOCH = datetime(1970, 1, 1)  # naive: the arithmetic below never overflows
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


class Accepted(NamedTuple):
    """A record ready for Kafka: ``event_id`` is its item id, ``time_ms`` its own time."""

    record: AuditRecord
    time_ms: int


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


def decode_body(body: bytes) -> list[AuditRecord]:
    """The records of a request body, validated; DecodeError naming the first bad field."""
    try:
        decoded = RECORDS_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise field_of(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError("body", f"not valid JSON: {exc}") from None
    if isinstance(decoded, list):
        if not decoded:
            raise DecodeError("body", "an empty array holds no records")
        return decoded
    return [decoded]


def accept(records: list[AuditRecord], *, batched: bool) -> list[Accepted]:
    """Check what the structs cannot and give each record its item id.

    ``batched`` says the body was an array, so a field is named ``[i].field``.
    """
    out: list[Accepted] = []
    for i, record in enumerate(records):
        where = f"[{i}]." if batched else ""
        if record.event_id is not None and not 0 < len(record.event_id) <= ids.MAX_ID_LENGTH:
            raise DecodeError(where + "event_id", f"must hold 1 to {ids.MAX_ID_LENGTH} characters")
        time_ms = parse_occurred_at(record.occurred_at, where + "occurred_at")
        out.append(Accepted(ids.with_item_id(record), time_ms))
    return out


def decode(body: bytes) -> list[Accepted]:
    """:func:`decode_body` then :func:`accept`: what the receiver writes for this body."""
    records = decode_body(body)
    return accept(records, batched=body.lstrip()[:1] == b"[")
