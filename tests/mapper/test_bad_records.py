"""The map stage on the real broker, fed records it cannot handle: each is parked in the
dead-letter topic with its reason and counted, and the stage goes on, also after a replay.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import orjson
import pytest

from streamproc import kafka, topics
from streamproc.config import Settings
from streamproc.dlq import H_ATTEMPT, H_REPLAY_OF
from streamproc.formats import envelope
from streamproc.mapper.processor import MapProcessor
from streamproc.mapping.router import MapOutcome, MappingContext, map_record
from streamproc.topics import Topics
from tests.mapper.test_processor import (
    FAST,
    Out,
    dead_lettered,
    item_ids,
    map_count,
    read_topic,
    started,
    tm_item,
    wait_output,
)
from tests.mapping.hostile import in_data, nested
from tests.procs import wait_for
from tests.sinks.support import committed
from tests.test_dlq import cli

pytestmark = pytest.mark.kafka

Record = tuple[bytes, envelope.Headers]


async def produce(settings: Settings, records: list[Record]) -> None:
    """Write raw records to the Ticketmatic topic, in order, keyed by one visitor."""
    names = Topics.for_prefix(settings.topic_prefix)
    producer = kafka.producer(settings.kafka)
    await producer.start()
    try:
        for value, headers in records:
            await producer.send_and_wait(names.ticketmatic, value, key=b"acme:v", headers=headers)
    finally:
        await producer.stop()


def headers_of(item_id: str | None) -> envelope.Headers:
    """What the poller writes with an item (without the id header if ``item_id`` is None)."""
    headers = [(envelope.H_SOURCE, b"ticketmatic"), (envelope.H_ACCOUNT, b"acme")]
    return headers if item_id is None else [*headers, (envelope.H_ITEM_ID, item_id.encode())]


def by_value(letters: list[Out]) -> dict[bytes | None, list[Out]]:
    found: dict[bytes | None, list[Out]] = {}
    for letter in letters:
        found.setdefault(letter.value, []).append(letter)
    return found


async def test_records_it_cannot_handle_are_parked_replayed_and_parked_again(
    make_settings: Callable[..., Settings],
) -> None:
    """A good item, one 1,000 levels deep (no id header), one with invalid UTF-8, a good
    one: both good ones mapped in order, both bad ones parked with their reasons and
    counted, the stage still running. Replayed, they fail again and come back with
    attempt 2, and the stage, still running, has committed past all six records."""
    settings = make_settings(partitions=1)
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    first, second = tm_item(0, "v", now), tm_item(3, "v", now + 3)
    deep = in_data(tm_item(1, "v", now + 1), nested(1000))
    not_utf8 = orjson.dumps(tm_item(2, "v", now + 2)).replace(b'"ref":"v"', b'"ref":"\xff"')
    before = {
        "parked": dead_lettered("map", "undecodable"),
        "deep": map_count("ticketmatic", "undecodable", "dead_lettered"),
        "utf8": map_count("ticketmatic", "webshop:add_tickets", "dead_lettered"),
        "mapped": map_count("ticketmatic", "webshop:add_tickets", "mapped"),
    }
    await produce(
        settings,
        [
            (orjson.dumps(first), headers_of(first["id"])),
            (deep, headers_of(None)),
            (not_utf8, headers_of(tm_item(2, "v", now + 2)["id"])),
            (orjson.dumps(second), headers_of(second["id"])),
        ],
    )
    processor = MapProcessor(settings, consumer_options=FAST)
    async with started(processor) as task:
        out = await wait_output(settings, 2)
        letters = await read_topic(settings, names.dlq, 2)
        assert not task.done()
        assert [o.offset for o in out] == sorted(o.offset for o in out)
        assert item_ids(out) == [first["id"], second["id"]]
        parked = by_value(letters)
        assert set(parked) == {deep, not_utf8}
        [deep_letter], [utf8_letter] = parked[deep], parked[not_utf8]
        assert deep_letter.headers[envelope.H_REASON] == (
            "undecodable: item: JSON nested deeper than the decoder's depth limit"
        )
        assert utf8_letter.headers[envelope.H_REASON] == (
            "undecodable: item: not JSON: Invalid UTF-8 encoded string"
        )
        assert deep_letter.headers[H_ATTEMPT] == utf8_letter.headers[H_ATTEMPT] == "1"
        assert dead_lettered("map", "undecodable") - before["parked"] == 2
        assert map_count("ticketmatic", "undecodable", "dead_lettered") - before["deep"] == 1
        utf8_count = map_count("ticketmatic", "webshop:add_tickets", "dead_lettered")
        assert utf8_count - before["utf8"] == 1
        assert map_count("ticketmatic", "webshop:add_tickets", "mapped") - before["mapped"] == 2

        # The CLI runs in a thread: the processor goes on meanwhile (and heartbeats).
        replay = await asyncio.to_thread(cli, settings, "dlq", "replay", "--timeout", "2")
        assert replay.returncode == 0, replay.stderr
        assert len(replay.stdout.splitlines()) == 2
        letters = await read_topic(settings, names.dlq, 4)

        async def past_all_six() -> bool:
            return (await committed(settings, processor.group_id, names.ticketmatic)) == {0: 6}

        await wait_for(past_all_six, what="the map stage's offsets past the replayed records")
        assert not task.done()
    assert len(letters) == 4
    for value, first_letter in ((deep, deep_letter), (not_utf8, utf8_letter)):
        again = [letter for letter in by_value(letters)[value] if letter != first_letter]
        assert len(again) == 1
        assert again[0].headers[H_ATTEMPT] == "2"
        assert again[0].headers[H_REPLAY_OF] == f"0:{first_letter.offset}"
        assert again[0].headers[envelope.H_REASON] == first_letter.headers[envelope.H_REASON]
    assert dead_lettered("map", "undecodable") - before["parked"] == 4
    assert processor.committed == 6
    assert len(await read_topic(settings, names.batches, 2)) == 2


async def test_a_record_the_mapping_raises_for_is_parked_as_internal_error(
    make_settings: Callable[..., Settings],
) -> None:
    """A mapper bug for one item: that item is parked as internal_error and counted, the
    items around it are mapped, and the stage keeps running."""
    settings = make_settings(partitions=1)
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    items = [tm_item(i, "boom" if i == 1 else "v", now + i) for i in range(3)]
    real = functools.partial(map_record, ctx=MappingContext.from_settings(settings))

    def buggy(source: str, value: bytes, item_id: str, account: str | None) -> MapOutcome:
        if b'"boom"' in value:
            raise ZeroDivisionError("a bug")
        return real(source, value, item_id, account)

    before = dead_lettered("map", "internal_error")
    before_type = map_count("ticketmatic", "unknown", "dead_lettered")
    await produce(settings, [(orjson.dumps(i), headers_of(i["id"])) for i in items])
    async with started(MapProcessor(settings, consumer_options=FAST, mapper=buggy)) as task:
        out = await wait_output(settings, 2)
        [letter] = await read_topic(settings, names.dlq, 1)
        assert not task.done()
    assert item_ids(out) == [items[0]["id"], items[2]["id"]]
    assert letter.value == orjson.dumps(items[1])
    assert letter.headers[envelope.H_REASON] == (
        "internal_error: streamproc.mapping.record.plan: unexpected ZeroDivisionError"
        " (a bug: see the map stage's log)"
    )
    assert dead_lettered("map", "internal_error") - before == 1
    assert map_count("ticketmatic", "unknown", "dead_lettered") - before_type == 1
