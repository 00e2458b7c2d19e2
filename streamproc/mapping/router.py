"""The mapping's entry point: one source record in, one outcome out. Pure: no I/O, no clock.

:func:`map_record` never raises for what a source can send. Its outcome is one of:

- :class:`Mapped`: the encoded mParticle batch, keyed by its user, with the item's own time
  and what had to be cut to fit mParticle's limits (``forwarded`` for an unknown type sent
  on as a custom event of type ``other`` because ``mapping.forward_unknown`` is on);
- :class:`Unknown`: a type (or Ticketure action) streamproc does not know, to be counted
  and skipped (``forward_unknown`` off);
- :class:`Unmappable`: for the dead-letter topic, with ``reason_code`` (``undecodable``,
  ``missing_field``, ``bad_field``, ``too_large``, ``unknown_source``) and a reason naming
  the field.

``item_type`` is the metrics label: the normalized Ticketmatic type
(``webshop:add_tickets``) or ``ticket_audit:<action>`` / ``gateway_audit:<action>``;
unknown types keep their normalized name, reduced to ``[a-z0-9:_]`` and 64 characters.

Every decode here goes through :func:`streamproc.decoding.decode_json`: JSON nested deeper
than the decoder can follow is ``undecodable`` (``too_deep``), never a RecursionError. A
type that is empty or only whitespace once normalized (a Ticketmatic ``type`` of
``"\\t\\n"``, a Ticketure ``type`` of ``" "``) names nothing to count or forward: the item is
``undecodable`` (label ``empty``), with or without ``forward_unknown``. Forwarded items
keep their untyped numbers; one beyond a float's range is dropped from the attributes and
counted (``invalid_value``), as any non-finite number is.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from streamproc.decoding import decode_json
from streamproc.errors import DecodeError
from streamproc.formats.ticketmatic import KNOWN_TYPES, decode_item, normalize_type
from streamproc.formats.ticketure import RECORD_DECODER
from streamproc.mapping import ticketmatic, ticketure
from streamproc.mapping.common import UNDECODABLE, UNKNOWN_SOURCE, Built, ItemError, scalar_pairs
from streamproc.mapping.context import MappingContext
from streamproc.mapping.fit import fit
from streamproc.mapping.limits import Limits

__all__ = ["MapOutcome", "Mapped", "MappingContext", "Unknown", "Unmappable", "map_record"]

_KNOWN = frozenset(KNOWN_TYPES)
_LABEL_CHARS = re.compile(r"[^a-z0-9:_]+")
_MAX_LABEL = 64


class Mapped(msgspec.Struct):
    """A batch for ``mparticle.batches``: ``key`` is its user, ``batch`` the JSON bytes."""

    key: str
    batch: bytes
    item_type: str
    item_time_ms: int
    truncations: dict[str, int]
    forwarded: bool = False


class Unknown(msgspec.Struct):
    """A type streamproc does not know: count it per ``item_type`` and skip it."""

    item_type: str


class Unmappable(msgspec.Struct):
    """An item that cannot become a batch: dead-letter it with the reason."""

    item_type: str
    reason_code: str
    reason: str


MapOutcome = Mapped | Unknown | Unmappable


def map_record(
    source: str, value: bytes, item_id: str, account: str | None, ctx: MappingContext
) -> MapOutcome:
    """Map one record of ``source`` ("ticketmatic": a raw eventstream item, ``account``
    from its header; "ticketure": a canonical audit record) into its outcome.
    """
    if source == ticketmatic.SOURCE:
        return _ticketmatic(value, item_id, account, ctx)
    if source == ticketure.SOURCE:
        return _ticketure(value, item_id, ctx)
    return Unmappable(
        "unknown", UNKNOWN_SOURCE, f"source {source[:40]!r} is not ticketmatic|ticketure"
    )


class _TypeOnly(msgspec.Struct):
    type: str


class _DataOnly(msgspec.Struct):
    data: Any = None


_TYPE_ONLY = msgspec.json.Decoder(_TypeOnly)
# Untyped floats as Python reads them: one out of range is inf (dropped and counted by the
# limits) instead of failing the whole item.
_LOOSE_AUDIT = msgspec.json.Decoder(ticketure.LooseAudit, float_hook=float)
_DATA_ONLY = msgspec.json.Decoder(_DataOnly, float_hook=float)
_BLANK_TYPE = "type: empty or only whitespace"


def _ticketmatic(
    value: bytes, item_id: str, account: str | None, ctx: MappingContext
) -> MapOutcome:
    try:
        item = decode_item(value)
    except DecodeError as exc:
        return Unmappable(_probe_type(value), UNDECODABLE, str(exc))
    except OverflowError:
        # items.parse_ts converts to UTC, which overflows for a ts in year 1 or 9999 with
        # an offset; that is an unreadable ts, not a crash.
        return Unmappable(_probe_type(value), UNDECODABLE, "ts: out of range")
    normalized = normalize_type(item.type)
    if not normalized:
        return Unmappable(_label(normalized), UNDECODABLE, _BLANK_TYPE)
    label = _label(normalized)
    short = normalized[len("webshop:") :] if normalized.startswith("webshop:") else None
    limits = Limits()
    try:
        if short in _KNOWN:
            built = ticketmatic.build(item, short, item_id, account, ctx, limits)
            return _mapped(built, label, limits)
        if not ctx.forward_unknown:
            return Unknown(label)
        data = decode_json(_DATA_ONLY, value, "item").data
        pairs = scalar_pairs(data, skip=frozenset({"ref"})) if isinstance(data, dict) else []
        built = ticketmatic.build_other(item, normalized, pairs, item_id, account, ctx, limits)
        return _mapped(built, label, limits, forwarded=True)
    except DecodeError as exc:
        return Unmappable(label, UNDECODABLE, str(exc))
    except ItemError as exc:
        return Unmappable(label, exc.code, str(exc))


def _ticketure(value: bytes, item_id: str, ctx: MappingContext) -> MapOutcome:
    limits = Limits()
    try:
        record = decode_json(RECORD_DECODER, value, "record")
    except DecodeError as exc:
        return _ticketure_other(value, item_id, ctx, limits, str(exc))
    label = ticketure.item_type(record)
    try:
        return _mapped(ticketure.build(record, item_id, ctx, limits), label, limits)
    except ItemError as exc:
        return Unmappable(label, exc.code, str(exc))


def _ticketure_other(
    value: bytes, item_id: str, ctx: MappingContext, limits: Limits, error: str
) -> MapOutcome:
    """A record the strict decoder refused: an unknown kind or action, or a broken one."""
    try:
        loose = decode_json(_LOOSE_AUDIT, value, "record")
    except DecodeError:
        return Unmappable("undecodable", UNDECODABLE, error)
    if not loose.type.strip():
        return Unmappable(_label(""), UNDECODABLE, _BLANK_TYPE)
    label = _label(f"{loose.type}:{loose.action}" if loose.action else loose.type)
    if not loose.is_unknown():
        return Unmappable(label, UNDECODABLE, error)
    if not ctx.forward_unknown:
        return Unknown(label)
    try:
        return _mapped(ticketure.build_other(loose, item_id, ctx, limits), label, limits, True)
    except ItemError as exc:
        return Unmappable(label, exc.code, str(exc))


def _mapped(built: Built, label: str, limits: Limits, forwarded: bool = False) -> Mapped:
    raw = fit(built.batch, limits)
    return Mapped(
        key=built.key,
        batch=raw,
        item_type=label,
        item_time_ms=built.item_time_ms,
        truncations=limits.counts,
        forwarded=forwarded,
    )


def _probe_type(value: bytes) -> str:
    """The normalized type of an item that failed to decode, if it has one, for the label."""
    try:
        return _label(normalize_type(decode_json(_TYPE_ONLY, value, "item").type))
    except DecodeError:
        return "undecodable"


def _label(text: str) -> str:
    return _LABEL_CHARS.sub("_", text.lower())[:_MAX_LABEL] or "empty"
