"""From one eventstream page to the Kafka records of one transaction (pure, no I/O).

Each item becomes one record: its JSON exactly as received, keyed by ``account:ref`` (one
visitor's journey stays in one partition, in order), with headers naming the source, the
account, the item id, the item's own time and the time it was received. Items at or below
the cursor, by ``(ms, seq)``, are dropped: Ticketmatic's ``id`` parameter is a minimum,
so the item a request starts from can come back. An item that cannot be decoded on its own
(no id, no type, wrong types, not JSON) becomes a dead-letter record with the reason, in
the same transaction, so it is parked exactly once and the cursor moves past it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from streamproc import kafka
from streamproc.dlq import DeadLetter
from streamproc.errors import DecodeError
from streamproc.sources.ticketmatic.cursor import Cursor, later, position_key
from streamproc.sources.ticketmatic.items import EventstreamPage, decode_item, ts_ms
from streamproc.topics import Topics

SOURCE = b"ticketmatic"
# Which poller process wrote a record (host:pid): traces a record to a replica.
H_POLLER = "poller"


INVALID_ITEM = "invalid_item"  # the dead-letter reason code of an item that does not decode


class OutRecord(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: kafka.Headers


class PageRecords(msgspec.Struct, kw_only=True):
    """What one page adds: the records to write (items first, then dead letters), counts,
    the newest item's position, and the cursor that commits them."""

    records: list[OutRecord]
    items: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    newest_ms: int | None = None
    cursor: Cursor
    moved: bool = False


class _Peek(msgspec.Struct):
    """The little that a broken item may still tell: its id and its ref."""

    id: Any = None
    data: Any = None


_PEEK = msgspec.json.Decoder(_Peek)


def record_key(account: str, ref: str | None) -> bytes:
    return f"{account}:{ref}".encode() if ref else account.encode()


def _peek(raw: bytes) -> tuple[str | None, str | None]:
    """(id, ref) of an item that failed to decode, where they can still be read."""
    try:
        peek = _PEEK.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, None
    item_id = peek.id if isinstance(peek.id, str) else None
    ref = peek.data.get("ref") if isinstance(peek.data, dict) else None
    return item_id, ref if isinstance(ref, str) else None


def build(
    page: EventstreamPage,
    *,
    account: str,
    cursor: Cursor | None,
    topics: Topics,
    received_ms: int,
    asof_ms: int,
    poller: str,
) -> PageRecords:
    """The records and the new cursor for ``page``, fetched at ``asof_ms`` from ``cursor``.

    ``moved`` says the cursor's ``id`` or ``next`` changed (it must be written even
    without items, or the same range is asked for again); ``known_ms`` advances to
    ``asof_ms`` when Ticketmatic said there was nothing more, else to the newest item.
    """
    previous = cursor or Cursor()
    # Items must lie beyond everything already written, including earlier ones of this page.
    floor = position_key(previous.id) if previous.id else None
    newest_id, newest_ts = previous.id, previous.ts
    out: list[OutRecord] = []
    dead: list[OutRecord] = []
    result = PageRecords(records=out, cursor=previous)
    account_b = account.encode()
    common: kafka.Headers = [
        (kafka.H_SOURCE, SOURCE),
        (kafka.H_ACCOUNT, account_b),
        (kafka.H_RECEIVED, str(received_ms).encode()),
        (H_POLLER, poller.encode()),
    ]
    item_ms: dict[str, int] = {}  # the items of a page share few distinct times
    for raw_item in page.results or ():
        raw = bytes(raw_item)
        item_ts: str | None = None
        try:
            item = decode_item(raw)
            item_id, item_ts = item.id, item.ts
            key = position_key(item_id)
            if floor is not None and key <= floor:
                result.duplicates += 1
                continue
            headers = [
                *common,
                (kafka.H_ITEM_ID, item_id.encode()),
                (kafka.H_ITEM_TIME, _time_header(item_ts, item_ms)),
            ]
            out.append(
                OutRecord(topics.ticketmatic, record_key(account, item.data.ref), raw, headers)
            )
            result.items += 1
        except (DecodeError, ValueError) as exc:
            peeked_id, ref = _peek(raw)
            peeked_key = _key_or_none(peeked_id)
            if floor is not None and peeked_key is not None and peeked_key <= floor:
                result.duplicates += 1
                continue
            letter = DeadLetter(
                stage="poll",
                source=SOURCE.decode(),
                reason_code=INVALID_ITEM,
                reason=str(exc),
                origin_topic=topics.ticketmatic,
                key=record_key(account, ref),
                value=raw,
                headers=[*common, (kafka.H_ITEM_ID, (peeked_id or "").encode())],
            )
            dead.append(
                OutRecord(topics.dlq, letter.key or account_b, letter.value, letter.headers)
            )
            result.dead_lettered += 1
            if peeked_key is None or peeked_id is None:
                continue  # without an id it cannot move the cursor
            key, item_id = peeked_key, peeked_id
        floor, newest_id, newest_ts = key, item_id, item_ts
        result.newest_ms = key[0]
    out.extend(dead)
    next_key = _key_or_none(page.nextid)
    # "0" is the nextid of an empty stream: it says nothing about a position.
    next_id = page.nextid if next_key is not None and next_key > (0, 0) else None
    known = asof_ms if not page.moreresults else (floor[0] if floor else 0)
    result.cursor = Cursor(
        id=newest_id,
        next=later(next_id, previous.next),
        ts=newest_ts,
        known_ms=max(previous.known_ms, known),
        updated_ms=received_ms,
    )
    result.moved = (result.cursor.id, result.cursor.next) != (previous.id, previous.next)
    return result


def _time_header(ts: str, seen: dict[str, int]) -> bytes:
    ms = seen.get(ts)
    if ms is None:
        ms = seen[ts] = ts_ms(ts)
    return str(ms).encode()


def _key_or_none(item_id: str | None) -> tuple[int, int] | None:
    if item_id is None:
        return None
    try:
        return position_key(item_id)
    except ValueError:
        return None
