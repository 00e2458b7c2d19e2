"""From one eventstream page to the Kafka records of one transaction (pure, no I/O).

Each item becomes one record: its JSON exactly as received, keyed by ``account:ref`` (one
visitor's journey stays in one partition, in order), with headers naming the source, the
account, the item id, the item's own time and the time it was received. Items at or below
the cursor, by ``(ms, seq)``, are dropped: Ticketmatic's ``id`` parameter is a minimum,
so the item a request starts from can come back. An item that cannot be decoded on its own
(no id, no type, wrong types, not JSON) becomes a dead-letter record with the reason, in
the same transaction, so it is parked exactly once and the cursor moves past it.

A page is checked as a whole before anything of it is used, because the cursor follows
it and a cursor that jumps ahead drops every later item as a duplicate: ids must ascend
strictly within the page and lie at or above the cursor (the item the request started
from may come back, and is dropped as a duplicate), no id, item time or ``nextid`` may be
more than ``max_skew_ms`` ahead of our clock, and ``nextid`` may not lie before the
page's last item, nor, while ``moreresults`` says there is more and no ``eventtypes``
filter lets the server pass items over, beyond the id just after it (the documented
``nextid``): a server that pointed past items it has not served would make us skip them
for good. A page that fails raises :class:`DecodeError` with the check's name as
its ``code``: nothing of it is written and the cursor stays where it was.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from streamproc.dlq import DeadLetter
from streamproc.errors import DecodeError
from streamproc.formats import envelope
from streamproc.formats.envelope import Source
from streamproc.formats.ticketmatic import (
    Cursor,
    EventstreamPage,
    TmItem,
    decode_item,
    later,
    position_key,
    ts_ms,
)
from streamproc.topics import Topics

# Which poller process wrote a record (host:pid): traces a record to a replica.
H_POLLER = "poller"


INVALID_ITEM = "invalid_item"  # the dead-letter reason code of an item that does not decode
MAX_SKEW_MS = 300_000  # see ticketmatic.max_future_skew_s
# The codes of a refused answer: the decoder's, the size limit's, then this module's checks.
MALFORMED_REASONS = (
    "not_json",
    "invalid",
    "too_large",
    "too_deep",
    "ids_not_ascending",
    "before_cursor",
    "future_item",
    "nextid_behind",
    "nextid_ahead",
    "nextid_future",
)


class OutRecord(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: envelope.Headers


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
    max_skew_ms: int = MAX_SKEW_MS,
    filtered: bool = False,
) -> PageRecords:
    """The records and the new cursor for ``page``, fetched at ``asof_ms`` from ``cursor``.

    ``moved`` says the cursor's ``id`` or ``next`` changed; ``known_ms`` advances to
    ``asof_ms`` when Ticketmatic said there was nothing more, else to the newest item.
    ``filtered``: the request named ``eventtypes``, so ``nextid`` may pass over items of
    other types. Raises DecodeError (``code`` ids_not_ascending, before_cursor,
    future_item, nextid_behind, nextid_ahead or nextid_future) for a page that fails the
    checks of the module doc.
    """
    previous = cursor or Cursor()
    floor = position_key(previous.id) if previous.id else None
    horizon = received_ms + max_skew_ms
    last: tuple[int, int] | None = None  # the previous item of this page with an id
    newest_id, newest_ts, newest_key = previous.id, previous.ts, floor
    out: list[OutRecord] = []
    dead: list[OutRecord] = []
    result = PageRecords(records=out, cursor=previous)
    account_b = account.encode()
    common: envelope.Headers = [
        (envelope.H_SOURCE, Source.TICKETMATIC.header),
        (envelope.H_ACCOUNT, account_b),
        (envelope.H_RECEIVED, str(received_ms).encode()),
        (H_POLLER, poller.encode()),
    ]
    item_ms: dict[str, int] = {}  # the items of a page share few distinct times
    ends_with_id = False  # the page's last item has a readable id
    for index, raw_item in enumerate(page.results or ()):
        raw = bytes(raw_item)
        item: TmItem | None = None
        item_id: str | None
        key: tuple[int, int] | None
        try:
            item = decode_item(raw)
            item_id, ref, key = item.id, item.data.ref, position_key(item.id)
        except DecodeError as exc:
            error = exc
            item_id, ref = _peek(raw)
            key = _key_or_none(item_id)
        ends_with_id = key is not None
        if key is not None:
            _check_item(index, key, last, floor, horizon)
            last = key
            if key == floor:
                result.duplicates += 1
                continue
        item_ts: str | None = None
        if item is None:
            letter = DeadLetter(
                stage="poll",
                source=Source.TICKETMATIC,
                reason_code=INVALID_ITEM,
                reason=str(error),
                origin_topic=topics.ticketmatic,
                key=record_key(account, ref),
                value=raw,
                headers=[*common, (envelope.H_ITEM_ID, (item_id or "").encode())],
            )
            dead.append(
                OutRecord(topics.dlq, letter.key or account_b, letter.value, letter.headers)
            )
            result.dead_lettered += 1
        else:
            item_ts = item.ts
            time_ms = _time_ms(item_ts, item_ms)
            if time_ms > horizon:
                raise _malformed(index, "ts", "is in the future", "future_item")
            headers = [
                *common,
                (envelope.H_ITEM_ID, item.id.encode()),
                (envelope.H_ITEM_TIME, str(time_ms).encode()),
            ]
            out.append(OutRecord(topics.ticketmatic, record_key(account, ref), raw, headers))
            result.items += 1
        if key is None:
            continue  # a parked item without a readable id cannot move the cursor
        newest_id, newest_ts, newest_key = item_id, item_ts, key
        result.newest_ms = key[0]
    out.extend(dead)
    next_key = position_key(page.nextid)
    if next_key[0] > horizon:
        raise DecodeError("nextid", "is in the future", code="nextid_future")
    if last is not None and next_key < last:
        raise DecodeError("nextid", "lies before the page's last item", code="nextid_behind")
    sure = page.moreresults and ends_with_id and not filtered  # nextid must follow the page
    if sure and last is not None and next_key > (last[0], last[1] + 1):
        raise DecodeError(
            "nextid",
            "skips past the id after the page's last item while moreresults is true",
            code="nextid_ahead",
        )
    # "0" is the nextid of an empty stream: it says nothing about a position.
    next_id = page.nextid if next_key > (0, 0) else None
    known = asof_ms if not page.moreresults else (newest_key[0] if newest_key else 0)
    result.cursor = Cursor(
        id=newest_id,
        next=later(next_id, previous.next),
        ts=newest_ts,
        known_ms=max(previous.known_ms, known),
        updated_ms=received_ms,
    )
    result.moved = (result.cursor.id, result.cursor.next) != (previous.id, previous.next)
    return result


def _check_item(
    index: int,
    key: tuple[int, int],
    last: tuple[int, int] | None,
    floor: tuple[int, int] | None,
    horizon_ms: int,
) -> None:
    """DecodeError unless item ``index``'s id follows the page's last and the cursor."""
    if last is not None and key <= last:
        raise _malformed(index, "id", "does not ascend from the item before", "ids_not_ascending")
    if floor is not None and key < floor:
        raise _malformed(index, "id", "lies before the cursor", "before_cursor")
    if key[0] > horizon_ms:
        raise _malformed(index, "id", "is in the future", "future_item")


def _malformed(index: int, field: str, reason: str, code: str) -> DecodeError:
    return DecodeError(f"results[{index}].{field}", reason, code=code)


def _time_ms(ts: str, seen: dict[str, int]) -> int:
    ms = seen.get(ts)
    if ms is None:
        ms = seen[ts] = ts_ms(ts)
    return ms


def _key_or_none(item_id: str | None) -> tuple[int, int] | None:
    if item_id is None:
        return None
    try:
        return position_key(item_id)
    except ValueError:
        return None
