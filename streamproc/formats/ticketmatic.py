"""Ticketmatic eventstream wire formats, decoded once at the edge.

Ticketmatic documents its items loosely (ids as strings or numbers, amounts as decimal
strings, fields that may be null), so the structs accept what the documentation shows and
nothing is inferred. Item ids are ``<13-digit epoch ms>-<sequence>`` and are ordered by the
``(ms, seq)`` pair, never as strings. Item types are parsed tolerantly (case and ``:``/``_``
separators), as Ticketmatic asks; unknown types are the mapper's business, not a decode
error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec

from streamproc.decoding import decode_json
from streamproc.errors import DecodeError, peer_text

Id = str | int | None
Amount = str | int | float | None


class TmTicket(msgspec.Struct, kw_only=True):
    id: Id = None
    price: Amount = None
    servicecharge: Amount = None
    tickettypepriceid: Id = None
    tickettypeid: Id = None
    tickettypename: str | None = None
    pricetypeid: Id = None
    pricetypename: str | None = None
    eventid: Id = None
    eventname: str | None = None


class TmProduct(msgspec.Struct, kw_only=True):
    id: Id = None
    productid: Id = None
    price: Amount = None
    producttype: Id = None
    productname: str | None = None


class TmOrder(msgspec.Struct, kw_only=True):
    id: Id = None
    saleschannelid: Id = None
    customerid: Id = None
    deliveryscenarioid: Id = None
    paymentscenarioid: Id = None
    totalamount: Amount = None
    tickets: list[TmTicket] = msgspec.field(default_factory=list)
    products: list[TmProduct] = msgspec.field(default_factory=list)


class TmData(msgspec.Struct, kw_only=True):
    ref: str | None = None
    tickets: list[TmTicket] = msgspec.field(default_factory=list)
    products: list[TmProduct] = msgspec.field(default_factory=list)
    order: TmOrder | None = None
    # webshop:pageview
    page: str | None = None
    params: dict[str, str | int | float | bool | None] = msgspec.field(default_factory=dict)
    orderid: Id = None
    customerid: Id = None


class TmItem(msgspec.Struct, kw_only=True):
    """One eventstream item, as Ticketmatic serves it."""

    id: str
    ts: str
    type: str
    data: TmData = msgspec.field(default_factory=TmData)


class EventstreamPage(msgspec.Struct, kw_only=True):
    """One answer of the eventstream endpoint; items stay raw so one bad item is isolated."""

    results: list[msgspec.Raw] | None
    nextid: str
    moreresults: bool


_ID = re.compile(r"^(\d{1,16})-(\d{1,10})$", re.ASCII)


def parse_item_id(item_id: str) -> tuple[int, int]:
    """``"1526985054069-0"`` -> ``(1526985054069, 0)``; DecodeError if it is not that shape."""
    match = _ID.match(item_id)
    if match is None:
        raise DecodeError("id", f"{peer_text(item_id, 40)!r} is not <epoch ms>-<sequence>")
    return int(match.group(1)), int(match.group(2))


def parse_ts(ts: str) -> datetime:
    """ISO 8601 in UTC, with or without an offset (``+0000``, ``+00:00``, ``Z``)."""
    text = ts.strip().upper()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        # OverflowError: a time near year 1 or 9999 whose offset moves it out of range.
        raise DecodeError("ts", f"{peer_text(ts, 40)!r} is not an ISO 8601 time") from None


def ts_ms(ts: str) -> int:
    """Epoch milliseconds of an item's ``ts``."""
    return int(parse_ts(ts).timestamp() * 1000)


def format_ts(when: datetime) -> str:
    """The API reference's form, ``2022-10-01T09:00:00+0000``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


KNOWN_TYPES = (
    "add_tickets",
    "add_products",
    "remove_tickets",
    "remove_products",
    "checkout_start",
    "checkout_addcustomerinfo",
    "checkout_adddeliveryinfo",
    "checkout_addpaymentinfo",
    "checkout_initiatepayment",
    "checkout_confirm",
    "pageview",
)


def normalize_type(item_type: str) -> str:
    """``"Webshop:Add_Tickets"``, ``"webshop_add_tickets"`` -> ``"webshop:add_tickets"``.

    Unknown types come back normalized the same way (lower case, ``webshop:`` prefix kept
    when present), so they can be counted per type.
    """
    text = item_type.strip().lower().replace("-", "_")
    for sep in (":", "_", "."):
        prefix = "webshop" + sep
        if text.startswith(prefix):
            return "webshop:" + text[len(prefix) :]
    return text


_ITEM_DECODER = msgspec.json.Decoder(TmItem)


def decode_item(raw: bytes) -> TmItem:
    """Decode one item; DecodeError naming the field and the reason if it is not one."""
    item = decode_json(_ITEM_DECODER, raw, "item")
    parse_item_id(item.id)
    parse_ts(item.ts)
    if not item.type:
        raise DecodeError("type", "is empty")
    return item


# Cursors: where each account's eventstream was read up to (the cursors topic's values).

_POSITION = re.compile(r"^(\d{1,16})(?:-(\d{1,10}))?$", re.ASCII)


class Cursor(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One account's position in its eventstream.

    ``id``: the newest item written to Kafka (items at or below it are never written
    again); ``next``: the ``nextid`` Ticketmatic gave with it, where the next request
    starts; ``ts``: that item's time as Ticketmatic wrote it; ``known_ms``: the stream is
    known to be read completely up to this epoch ms (the newest item, or the time of a poll
    that found nothing more), which is what the 4 h retention is measured against;
    ``updated_ms``: when this record was written.
    """

    id: str | None = None
    next: str | None = None
    ts: str | None = None
    known_ms: int = 0
    updated_ms: int = 0


_CURSOR_ENCODER = msgspec.json.Encoder()
_CURSOR_DECODER = msgspec.json.Decoder(Cursor)


def encode_cursor(cursor: Cursor) -> bytes:
    return _CURSOR_ENCODER.encode(cursor)


def decode_cursor(value: bytes) -> Cursor:
    """A cursor record's value; msgspec.DecodeError if it is not one."""
    return _CURSOR_DECODER.decode(value)


def position_key(item_id: str) -> tuple[int, int]:
    """Order key of an id or ``nextid``: ``"1526985054069-3"`` -> ``(1526985054069, 3)``.

    Lenient where :func:`parse_item_id` is strict: Ticketmatic answers ``"0"`` as the
    ``nextid`` of an empty stream, so a bare number is ``(n, 0)``. ValueError otherwise.
    """
    match = _POSITION.match(item_id.strip())
    if match is None:
        raise ValueError(f"{peer_text(item_id, 40)!r} is not an eventstream id")
    return int(match.group(1)), int(match.group(2) or 0)


def later(a: str | None, b: str | None) -> str | None:
    """The later of two ids by (ms, seq); an id that does not parse loses."""
    if a is None or b is None:
        return a or b
    try:
        ka = position_key(a)
    except ValueError:
        return b
    try:
        kb = position_key(b)
    except ValueError:
        return a
    return a if ka >= kb else b


def newer(a: Cursor | None, b: Cursor) -> Cursor:
    """The cursor further along (by ``id``, then ``known_ms``); ``b`` wins a tie."""
    if a is None:
        return b
    winner = later(a.id, b.id)
    if a.id != b.id:
        return a if winner == a.id else b
    return a if a.known_ms > b.known_ms else b
