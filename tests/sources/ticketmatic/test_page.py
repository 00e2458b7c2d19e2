"""From a page to the records of one transaction: keys, headers, dedupe, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc.errors import DecodeError
from streamproc.formats import envelope
from streamproc.formats.ticketmatic import Cursor
from streamproc.sources.ticketmatic.client import decode_page
from streamproc.sources.ticketmatic.page import H_POLLER, PageRecords, build
from streamproc.topics import Topics
from tests.metrics import sample

TOPICS = Topics.for_prefix("p.")
NOW_MS = 1_714_556_000_000  # the "received" clock of these pages: 2024-05-01T09:33:20Z


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


def run(
    body: bytes, cursor: Cursor | None = None, asof_ms: int = 5_000, *, filtered: bool = False
) -> PageRecords:
    return build(
        decode_page(body),
        account="acme",
        cursor=cursor,
        topics=TOPICS,
        received_ms=NOW_MS,
        asof_ms=asof_ms,
        poller="host:1",
        filtered=filtered,
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
    assert headers[envelope.H_SOURCE] == b"ticketmatic"
    assert headers[envelope.H_ACCOUNT] == b"acme"
    assert headers[envelope.H_ITEM_ID] == b"1000-0"
    assert headers[envelope.H_ITEM_TIME] == b"1714555800000"
    assert headers[envelope.H_RECEIVED] == str(NOW_MS).encode()
    assert headers[H_POLLER] == b"host:1"
    assert built.items == 2
    assert built.cursor == Cursor(
        id="1000-1", next="1000-1", ts="2024-05-01T09:30:00", known_ms=5_000, updated_ms=NOW_MS
    )
    assert built.moved


def test_the_start_item_served_again_is_a_counted_duplicate() -> None:
    """The item a request started from comes back (id is a minimum): counted, not written."""
    cursor = Cursor(id="1000-9", next="1000-9", known_ms=1)
    body = page_of(
        orjson.dumps(item("1000-9")),
        orjson.dumps(item("1000-10")),
        orjson.dumps(item("1001-0")),
        nextid="1001-1",
        more=True,
    )
    built = run(body, cursor)
    assert [dict(r.headers)[envelope.H_ITEM_ID] for r in built.records] == [b"1000-10", b"1001-0"]
    assert built.duplicates == 1
    assert built.cursor.id == "1001-0"
    assert built.cursor.next == "1001-1"
    # moreresults: only what was read is known, not the time of the request.
    assert built.cursor.known_ms == 1001
    assert built.newest_ms == 1001


def _refused(body: bytes, cursor: Cursor | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        run(body, cursor)
    return caught.value


@pytest.mark.parametrize(
    ("ids", "nextid", "code", "field"),
    [
        (["2000-3", "2000-2", "2000-1"], "2000-4", "ids_not_ascending", "results[1].id"),
        (["2000-1", "2000-1"], "2000-2", "ids_not_ascending", "results[1].id"),
        (["1000-10", "999-50"], "1000-11", "ids_not_ascending", "results[1].id"),
        (["999-50", "1000-10"], "1000-11", "before_cursor", "results[0].id"),
        (["1000-10", f"{NOW_MS + 301_000}-0"], "1000-11", "future_item", "results[1].id"),
        (["1000-10"], "9999999999999-0", "nextid_future", "nextid"),
        (["1000-10", "1000-12"], "1000-11", "nextid_behind", "nextid"),
        (["1000-10", "1000-12"], "1000-14", "nextid_ahead", "nextid"),
        (["1000-10", "1000-12"], f"{NOW_MS}-0", "nextid_ahead", "nextid"),
    ],
)
def test_an_insane_page_is_refused_whole(
    ids: list[str], nextid: str, code: str, field: str
) -> None:
    """Disorder, items before the cursor, ids or nextid in the future: nothing is used."""
    cursor = Cursor(id="1000-9", next="1000-10")
    body = page_of(*(orjson.dumps(item(i)) for i in ids), nextid=nextid, more=True)
    error = _refused(body, cursor)
    assert (error.code, error.field) == (code, field)


def test_a_nextid_past_the_last_item_is_taken_where_it_skips_nothing() -> None:
    """Beyond the id after the last item, nextid would skip unserved items: refused while
    moreresults is true (above); kept when the stream said it has no more, or when an
    eventtypes filter lets the server pass over items of other types."""
    items = [orjson.dumps(item("1000-10")), orjson.dumps(item("1000-12"))]
    exact = run(page_of(*items, nextid="1000-13", more=True))
    assert exact.cursor.next == "1000-13"
    caught_up = run(page_of(*items, nextid=f"{NOW_MS}-0", more=False))
    assert caught_up.cursor.next == f"{NOW_MS}-0"
    filtered = run(page_of(*items, nextid="1500-0", more=True), filtered=True)
    assert filtered.cursor.next == "1500-0"


def test_an_item_time_in_the_future_refuses_the_page() -> None:
    """An item whose ts lies beyond the allowed skew would make the lag lie: refused."""
    future = {**item("1000-10"), "ts": "2030-01-01T00:00:00Z"}
    error = _refused(page_of(orjson.dumps(future), nextid="1000-11"))
    assert (error.code, error.field) == ("future_item", "results[0].ts")


def test_a_broken_item_takes_part_in_the_checks() -> None:
    """A broken item with a readable id must ascend too; one in the future refuses the page."""
    broken = b'{"id":"%d-0","ts":"2024-05-01T09:30:00","data":{}}' % (NOW_MS + 10**9)
    error = _refused(page_of(orjson.dumps(item("1000-10")), broken, nextid="1000-11"))
    assert error.code == "future_item"
    behind = b'{"id":"1000-1","data":{}}'
    error = _refused(page_of(orjson.dumps(item("1000-10")), behind, nextid="1000-11"))
    assert error.code == "ids_not_ascending"


def test_skew_within_the_limit_is_accepted() -> None:
    """An id a little ahead of our clock (within max_skew_ms) is a clock difference, kept."""
    ahead = f"{NOW_MS + 299_000}-0"
    built = run(page_of(orjson.dumps(item(ahead)), nextid=ahead))
    assert built.items == 1
    assert built.cursor.id == ahead


def test_broken_items_go_to_the_dead_letter_topic_and_move_the_cursor() -> None:
    """An item without type, or not an object, is dead-lettered with the reason; the rest stay."""
    before = sample(
        "streamproc_dead_lettered_total", stage="poll", source="ticketmatic", reason="invalid_item"
    )
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
    reason = envelope.header(letters[0].headers, envelope.H_REASON) or ""
    assert reason.startswith("invalid_item: ")
    assert "type" in reason
    assert envelope.header(letters[0].headers, envelope.H_ORIGIN_TOPIC) == TOPICS.ticketmatic
    assert built.cursor.id == "11-0"
    # Counted by the poller once the page's transaction commits, not when it is built.
    assert (
        sample(
            "streamproc_dead_lettered_total",
            stage="poll",
            source="ticketmatic",
            reason="invalid_item",
        )
        == before
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
