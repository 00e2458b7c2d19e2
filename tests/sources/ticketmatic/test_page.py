"""From a page to the records of one transaction: keys, headers, dedupe, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streamproc import kafka, metrics
from streamproc.sources.ticketmatic.client import decode_page
from streamproc.sources.ticketmatic.cursor import Cursor
from streamproc.sources.ticketmatic.page import H_POLLER, PageRecords, build
from streamproc.topics import Topics

TOPICS = Topics.for_prefix("p.")


def item(
    item_id: str, ref: str | None = "user1", item_type: str = "webshop:pageview"
) -> dict[str, Any]:
    data: dict[str, Any] = {"page": "event", "params": {}}
    if ref is not None:
        data["ref"] = ref
    return {"id": item_id, "ts": "2024-05-01T09:30:00", "type": item_type, "data": data}


def page_of(*raws: bytes, nextid: str = "0", more: bool = False) -> bytes:
    results = b"[" + b",".join(raws) + b"]" if raws else b"null"
    return b'{"results":%s,"nextid":"%s","moreresults":%s}' % (
        results,
        nextid.encode(),
        b"true" if more else b"false",
    )


def run(body: bytes, cursor: Cursor | None = None, asof_ms: int = 5_000) -> PageRecords:
    return build(
        decode_page(body),
        account="acme",
        cursor=cursor,
        topics=TOPICS,
        received_ms=7_000,
        asof_ms=asof_ms,
        poller="host:1",
    )


def test_items_keep_their_bytes_key_and_headers() -> None:
    """Each item is written as received, keyed account:ref, with the five headers."""
    raw = (
        b'{ "id":"1000-0", "ts":"2024-05-01T09:30:00+0000",'
        b' "type":"webshop:pageview", "data":{"ref":"u 1"} }'
    )
    built = run(page_of(raw, orjson.dumps(item("1000-1", ref=None)), nextid="1000-1"))
    first, second = built.records
    assert first.topic == TOPICS.ticketmatic
    assert first.value == raw
    assert first.key == b"acme:u 1"
    assert second.key == b"acme"
    headers = dict(first.headers)
    assert headers[kafka.H_SOURCE] == b"ticketmatic"
    assert headers[kafka.H_ACCOUNT] == b"acme"
    assert headers[kafka.H_ITEM_ID] == b"1000-0"
    assert headers[kafka.H_ITEM_TIME] == b"1714555800000"
    assert headers[kafka.H_RECEIVED] == b"7000"
    assert headers[H_POLLER] == b"host:1"
    assert built.items == 2
    assert built.cursor == Cursor(
        id="1000-1", next="1000-1", ts="2024-05-01T09:30:00", known_ms=5_000, updated_ms=7_000
    )
    assert built.moved


def test_items_at_or_below_the_cursor_are_dropped() -> None:
    """The start item served again (id is a minimum) and anything older are not written."""
    cursor = Cursor(id="1000-9", next="1000-9", known_ms=1)
    body = page_of(
        orjson.dumps(item("999-50")),
        orjson.dumps(item("1000-9")),
        orjson.dumps(item("1000-10")),
        orjson.dumps(item("1001-0")),
        nextid="1001-0",
        more=True,
    )
    built = run(body, cursor)
    assert [dict(r.headers)[kafka.H_ITEM_ID] for r in built.records] == [b"1000-10", b"1001-0"]
    assert built.duplicates == 2
    assert built.cursor.id == "1001-0"
    # moreresults: only what was read is known, not the time of the request.
    assert built.cursor.known_ms == 1001
    assert built.newest_ms == 1001


def test_a_repeated_item_within_a_page_is_written_once() -> None:
    """An id seen earlier in the same page counts as a duplicate."""
    body = page_of(orjson.dumps(item("5-1")), orjson.dumps(item("5-1")), nextid="5-1")
    assert run(body).items == 1


def test_broken_items_go_to_the_dead_letter_topic_and_move_the_cursor() -> None:
    """An item without type, or not an object, is dead-lettered with the reason; the rest stay."""
    before = metrics.DEAD_LETTERED.labels("poll", "ticketmatic", "invalid_item")._value.get()
    no_type = b'{"id":"10-0","ts":"2024-05-01T09:30:00","data":{"ref":"u9"}}'
    no_id = b'{"ts":"2024-05-01T09:30:00","type":"webshop:pageview","data":{}}'
    body = page_of(
        orjson.dumps(item("9-0")), no_type, b"17", no_id, orjson.dumps(item("11-0")), nextid="11-0"
    )
    built = run(body)
    topics = [r.topic for r in built.records]
    assert topics == [TOPICS.ticketmatic, TOPICS.ticketmatic] + [TOPICS.dlq] * 3
    assert built.items == 2
    assert built.dead_lettered == 3
    letters = built.records[2:]
    assert [r.value for r in letters] == [no_type, b"17", no_id]
    assert letters[0].key == b"acme:u9"
    reason = kafka.header(letters[0].headers, kafka.H_REASON) or ""
    assert reason.startswith("invalid_item: ")
    assert "type" in reason
    assert kafka.header(letters[0].headers, kafka.H_ORIGIN_TOPIC) == TOPICS.ticketmatic
    assert built.cursor.id == "11-0"
    # Counted by the poller once the page's transaction commits, not when it is built.
    assert (
        metrics.DEAD_LETTERED.labels("poll", "ticketmatic", "invalid_item")._value.get() == before
    )


def test_a_broken_item_already_behind_the_cursor_is_not_parked_again() -> None:
    """A dead-lettered item served again after the cursor moved past it is a duplicate."""
    no_type = b'{"id":"10-0","ts":"2024-05-01T09:30:00","data":{}}'
    built = run(page_of(no_type, nextid="10-0"), Cursor(id="10-0"))
    assert built.records == []
    assert built.duplicates == 1


def test_empty_answers_leave_the_position_alone() -> None:
    """`results: null` with nextid "0" moves nothing; known_ms becomes the request time."""
    built = run(page_of(nextid="0"), Cursor(id="10-0", next="10-0", known_ms=1), asof_ms=9_000)
    assert built.records == []
    assert not built.moved
    assert built.cursor.id == "10-0"
    assert built.cursor.known_ms == 9_000
    fresh = run(page_of(nextid="0"))
    assert not fresh.moved
    assert fresh.cursor.id is None


def test_nextid_ahead_without_items_moves_the_cursor() -> None:
    """A filtered page can skip ahead without items: the new nextid must be kept."""
    built = run(page_of(nextid="20-0", more=True), Cursor(id="10-0", next="10-0"))
    assert built.moved
    assert built.cursor.next == "20-0"
    assert built.cursor.id == "10-0"


def test_every_reference_item_becomes_a_record(shared_reference: Path) -> None:
    """All ten documented items pass into the topic, none dead-lettered."""
    raw = (shared_reference / "ticketmatic" / "eventstream-items.json").read_bytes()
    examples = orjson.loads(raw)
    examples.sort(key=lambda e: tuple(int(x) for x in e["id"].split("-")))
    body = page_of(*(orjson.dumps(e) for e in examples), nextid=examples[-1]["id"])
    built = run(body)
    assert built.items == 10
    assert built.dead_lettered == 0
    assert {r.key for r in built.records} == {b"acme:user12345", b"acme:user23456"}
