"""The map stage on the real broker: dedupe across restarts, outcomes, rebalances, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from streamproc import kafka, topics
from streamproc.config import MappingSettings, Settings
from streamproc.formats import envelope
from streamproc.formats.ticketmatic import format_ts
from streamproc.formats.ticketure import ENCODER, TicketAttributes, TicketAudit
from streamproc.mapper.dedupe import parse_changelog_key
from streamproc.mapper.processor import MapProcessor
from streamproc.topics import Topics
from tests import topics as topics_reader
from tests.metrics import sample
from tests.procs import wait_for

pytestmark = pytest.mark.kafka

REFERENCE = (
    Path(__file__).resolve().parents[3] / "shared/reference/ticketmatic/eventstream-items.json"
)
HOUR_MS = 3_600_000
FAST = {"heartbeat_interval_ms": 300, "session_timeout_ms": 6000}


class Out(msgspec.Struct):
    """One record read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


def add_tickets_item() -> dict[str, Any]:
    """The reference's ``webshop:add_tickets`` item (or a faithful copy of its shape)."""
    if REFERENCE.exists():
        for item in json.loads(REFERENCE.read_text()):
            if item["type"] == "webshop:add_tickets":
                return dict(item)
    ticket = {"id": "1", "price": "20", "tickettypepriceid": "580", "eventname": "show"}
    return {
        "id": "0-0",
        "ts": "2022-09-13T11:46:25",
        "type": "webshop:add_tickets",
        "data": {"tickets": [ticket], "order": {"id": "398", "tickets": [ticket]}, "ref": "u"},
    }


def tm_item(
    seq: int, ref: str, time_ms: int, item_type: str = "webshop:add_tickets"
) -> dict[str, Any]:
    """A Ticketmatic item with its own id, time, visitor and type."""
    item = copy.deepcopy(add_tickets_item())
    item["id"] = f"{time_ms}-{seq}"
    item["ts"] = format_ts(_utc(time_ms))
    item["type"] = item_type
    item["data"]["ref"] = ref
    return item


def _utc(ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def produce_tm(
    settings: Settings, items: list[dict[str, Any]], account: str = "acme"
) -> None:
    """Write Ticketmatic items as the poller does: raw JSON, keyed by visitor, with headers."""
    names = Topics.for_prefix(settings.topic_prefix)
    producer = kafka.producer(settings.kafka, linger_ms=10)
    await producer.start()
    try:
        futures = []
        for item in items:
            time_ms = int(item["id"].split("-")[0])
            futures.append(
                await producer.send(
                    names.ticketmatic,
                    orjson.dumps(item),
                    key=f"{account}:{item['data'].get('ref')}".encode(),
                    headers=[
                        (envelope.H_SOURCE, b"ticketmatic"),
                        (envelope.H_ACCOUNT, account.encode()),
                        (envelope.H_ITEM_ID, item["id"].encode()),
                        (envelope.H_ITEM_TIME, str(time_ms).encode()),
                    ],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings,
    topic: str,
    expected: int,
    timeout_s: float = 30.0,
    isolation_level: str = "read_committed",
) -> list[Out]:
    """Every record of ``topic`` (:func:`tests.topics.read_topic`), headers decoded."""
    records = await topics_reader.read_topic(
        settings, topic, expected, timeout_s=timeout_s, isolation_level=isolation_level
    )
    return [
        Out(r.partition, r.offset, r.key, r.value, {k: v.decode() for k, v in r.headers})
        for r in records
    ]


@contextlib.asynccontextmanager
async def started(processor: MapProcessor) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``processor`` in a task (to check it still runs); stop it (SIGTERM's path) on exit."""
    stop = asyncio.Event()
    async with processor:
        task = asyncio.create_task(processor.work(stop))
        try:
            yield task
        finally:
            stop.set()
            await task


@contextlib.asynccontextmanager
async def running(processor: MapProcessor) -> AsyncIterator[MapProcessor]:
    """Run ``processor`` in the background; stop it (SIGTERM's path) on exit."""
    async with started(processor):
        yield processor


def map_count(source: str, item_type: str, outcome: str) -> float:
    return sample("streamproc_map_items_total", source=source, type=item_type, outcome=outcome)


async def wait_output(settings: Settings, count: int, timeout_s: float = 40.0) -> list[Out]:
    """Wait until the batches topic holds ``count`` committed records; return them all."""
    names = Topics.for_prefix(settings.topic_prefix)
    out = await read_topic(settings, names.batches, count, timeout_s=timeout_s)
    assert len(out) >= count, f"{len(out)} batches after {timeout_s} s, expected {count}"
    return out


def dead_lettered(stage: str, reason: str) -> float:
    return sample(
        "streamproc_dead_lettered_total", stage=stage, source="ticketmatic", reason=reason
    )


def dedupe_hits(source: str) -> float:
    return sample("streamproc_dedupe_hits_total", source=source)


def dedupe_size(source: str = "ticketmatic") -> float:
    return sample("streamproc_dedupe_state_size", source=source)


def item_ids(out: list[Out]) -> list[str]:
    return [o.headers[envelope.H_ITEM_ID] for o in out]


async def test_same_item_three_times_across_restart_gives_one_batch(
    make_settings: Callable[..., Settings],
) -> None:
    """An item seen twice, then again after a restart (state from the changelog): one batch."""
    settings = make_settings(partitions=2)
    await topics.ensure(settings)
    now = int(time.time() * 1000)
    hits_before = dedupe_hits("ticketmatic")
    item, marker = tm_item(0, "visitor-1", now), tm_item(1, "visitor-1", now + 1)
    await produce_tm(settings, [item, item])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        first = await wait_output(settings, 1)
    await produce_tm(settings, [item, marker])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 2)
    assert item_ids(first) == [item["id"]]
    assert sorted(item_ids(out)) == sorted([item["id"], marker["id"]])
    batch = orjson.loads(out[0].value or b"{}")
    assert batch["events"], batch
    assert out[0].headers[envelope.H_SOURCE] == "ticketmatic"
    assert out[0].headers[envelope.H_ACCOUNT] == "acme"
    assert out[0].headers[envelope.H_ITEM_TIME] == str(now)
    assert dedupe_hits("ticketmatic") == hits_before + 2


async def test_unknown_types_counted_and_skipped(make_settings: Callable[..., Settings]) -> None:
    """An unknown item type produces no batch, is counted by type, and is not re-read."""
    settings = make_settings(partitions=1)
    await topics.ensure(settings)
    now = int(time.time() * 1000)
    before = map_count("ticketmatic", "webshop:teleport", "unknown_type")
    unknown, known = tm_item(0, "v", now, "webshop:teleport"), tm_item(1, "v", now + 1)
    await produce_tm(settings, [unknown, known])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 1)
    assert item_ids(out) == [known["id"]]
    assert map_count("ticketmatic", "webshop:teleport", "unknown_type") == before + 1
    await produce_tm(settings, [tm_item(2, "v", now + 2)])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 2)
    assert len(out) == 2
    assert map_count("ticketmatic", "webshop:teleport", "unknown_type") == before + 1


async def test_unknown_types_forwarded_when_configured(
    make_settings: Callable[..., Settings],
) -> None:
    """With forward_unknown on, an unknown type becomes a batch and is counted as forwarded."""
    settings = make_settings(partitions=1, mapping=MappingSettings(forward_unknown=True))
    await topics.ensure(settings)
    before = map_count("ticketmatic", "webshop:teleport", "forwarded")
    await produce_tm(settings, [tm_item(0, "v", int(time.time() * 1000), "webshop:teleport")])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 1)
    assert len(out) == 1
    assert map_count("ticketmatic", "webshop:teleport", "forwarded") == before + 1


@pytest.mark.parametrize("near_limit", [False, True])
async def test_unmappable_goes_to_the_dead_letter_topic_with_its_reason(
    make_settings: Callable[..., Settings], near_limit: bool
) -> None:
    """An item missing a required field is dead-lettered, byte for byte, with the reason.

    Also when the record is as large as a producer with the default max_request_size
    (1 MiB) takes: its letter is larger (the headers), and must not fail its transaction.
    Uncompressed, so that the broker's limit on the dead-letter topic is what is tested.
    """
    settings = make_settings(partitions=1)
    if near_limit:
        kafka_options = msgspec.structs.replace(settings.kafka, compression_type="none")
        settings = msgspec.structs.replace(settings, kafka=kafka_options)
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    broken = tm_item(0, "v", now)
    del broken["data"]["ref"]
    if near_limit:
        broken["data"]["note"] = "x" * (1024 * 1024 - len(orjson.dumps(broken)) - 300)
    good = tm_item(1, "v", now + 1)
    await produce_tm(settings, [broken, good])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 1)  # the item after it, mapped
        dead = await read_topic(settings, names.dlq, 1)
    assert len(out) == 1
    assert len(dead) == 1
    assert dead[0].value == orjson.dumps(broken)
    assert dead[0].headers[envelope.H_REASON].startswith("missing_field")
    assert "data.ref" in dead[0].headers[envelope.H_REASON]
    assert dead[0].headers[envelope.H_ORIGIN_TOPIC] == names.ticketmatic
    assert dead[0].headers[envelope.H_ITEM_ID] == broken["id"]


async def test_ticketure_records_are_mapped_and_deduped(
    make_settings: Callable[..., Settings],
) -> None:
    """A pushed audit record retried twice gives one batch with its headers carried over."""
    settings = make_settings(partitions=2)
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    record = TicketAudit(
        action="redeemed",
        occurred_at="2024-05-01T10:00:00Z",
        event_id="evt-1",
        email="someone@example.com",
        attributes=TicketAttributes(ticket_order_id="order-7", ticket_type="Adult"),
    )
    producer = kafka.producer(settings.kafka)
    await producer.start()
    try:
        for _ in range(2):
            await producer.send_and_wait(
                names.ticketure,
                ENCODER.encode(record),
                key=b"order-7",
                headers=[(envelope.H_SOURCE, b"ticketure"), (envelope.H_ITEM_ID, b"evt-1")],
            )
    finally:
        await producer.stop()
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 1)
    assert len(out) == 1
    assert out[0].headers[envelope.H_SOURCE] == "ticketure"
    assert out[0].headers[envelope.H_ITEM_ID] == "evt-1"
    assert out[0].headers[envelope.H_ITEM_TIME] == str(1714557600000)


async def test_expired_ids_are_tombstoned_and_not_restored(
    make_settings: Callable[..., Settings],
) -> None:
    """Ids older than the window (by item time) leave the state and the changelog."""
    settings = make_settings(partitions=1, mapping=MappingSettings(dedupe_window_s=4 * 3600))
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    start = int(time.time() * 1000) - 10 * HOUR_MS
    old = [tm_item(i, f"v{i}", start + i) for i in range(30)]
    new = [tm_item(i, f"v{i}", start + 6 * HOUR_MS + i) for i in range(10)]
    await produce_tm(settings, old)
    async with running(MapProcessor(settings, consumer_options=FAST)):
        await wait_output(settings, 30)
        await wait_for(lambda: dedupe_size() == 30, what="30 ids remembered")
        assert dedupe_size("ticketure") == 0
        await produce_tm(settings, new)
        await wait_output(settings, 40)
        await wait_for(lambda: dedupe_size() == 10, what="only the 10 recent ids left")
    changelog = await read_topic(settings, names.dedupe, 3)
    tombstones = [c for c in changelog if c.value is None]
    assert tombstones, changelog
    assert all(parse_changelog_key(c.key) for c in changelog)
    async with running(MapProcessor(settings, consumer_options=FAST)):
        await wait_for(lambda: dedupe_size() == 10, what="10 ids restored")
    # An old id is forgotten (a batch again); a recent one is still a duplicate.
    await produce_tm(settings, [old[0], new[0]])
    async with running(MapProcessor(settings, consumer_options=FAST)):
        out = await wait_output(settings, 41)
    assert Counter(item_ids(out))[old[0]["id"]] == 2
    assert Counter(item_ids(out))[new[0]["id"]] == 1


async def test_second_consumer_joining_mid_stream_loses_and_duplicates_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    """A rebalance while items keep coming: every item gives exactly one batch, in order."""
    settings = make_settings(partitions=3)
    await topics.ensure(settings)
    now = int(time.time() * 1000)
    items = [tm_item(i, f"visitor-{i % 7}", now + i) for i in range(600)]
    first = MapProcessor(settings, consumer_options=FAST, max_records=50, txn_max_records=50)
    second = MapProcessor(settings, consumer_options=FAST, max_records=50, txn_max_records=50)
    async with running(first):
        await produce_tm(settings, items[:200])
        await wait_output(settings, 50)
        async with running(second):
            await produce_tm(settings, items[200:400])
            await wait_for(lambda: bool(second._parts), what="the second consumer's partitions")
            await produce_tm(settings, items[400:])
            out = await wait_output(settings, 600, timeout_s=60)
    assert sorted(item_ids(out)) == sorted(i["id"] for i in items)
    assert_order_per_key(out)


def assert_order_per_key(out: list[Out]) -> None:
    """Within each output key, items appear in the order they were produced (by id)."""
    by_key: dict[bytes | None, list[tuple[int, int]]] = {}
    for o in sorted(out, key=lambda o: (o.partition, o.offset)):
        ms, seq = o.headers[envelope.H_ITEM_ID].split("-")
        by_key.setdefault(o.key, []).append((int(ms), int(seq)))
    for key, ids in by_key.items():
        assert ids == sorted(ids), key


async def test_zombie_that_lost_its_partition_cannot_commit(
    make_settings: Callable[..., Settings],
) -> None:
    """A consumer held mid-transaction while its partition moves is fenced at commit."""
    # A transaction timeout far beyond the test: only the new owner's producer can fence.
    settings = make_settings(partitions=1)
    settings = msgspec.structs.replace(
        settings, kafka=msgspec.structs.replace(settings.kafka, transaction_timeout_ms=600_000)
    )
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    items = [tm_item(i, f"visitor-{i % 3}", now + i) for i in range(20)]
    await produce_tm(settings, items)
    held, release = asyncio.Event(), asyncio.Event()
    tm_partition = TopicPartition(names.ticketmatic, 0)

    async def hold(tp: TopicPartition) -> None:
        if tp == tm_partition and not release.is_set():
            await zombie._parts[tp].producer.flush()  # its batches reach the broker, uncommitted
            held.set()
            await release.wait()

    # Members are ordered by client id: the owner sorts first and so gets ticketmatic[0].
    zombie = MapProcessor(
        settings,
        consumer_options={**FAST, "client_id": "b-zombie"},
        revoke_timeout_s=0.5,
        before_commit=hold,
    )
    owner = MapProcessor(settings, consumer_options={**FAST, "client_id": "a-owner"})
    async with running(zombie):
        await asyncio.wait_for(held.wait(), 30)
        async with running(owner):
            out = await wait_output(settings, 20, timeout_s=30)
            assert tm_partition in owner._parts
            release.set()
            await wait_for(lambda: zombie.fenced == 1, what="the zombie's commit to be fenced")
    assert sorted(item_ids(out)) == sorted(i["id"] for i in items)
    assert len(await read_topic(settings, names.batches, 20)) == 20
    # The zombie had written its batches before it was held: they exist, aborted.
    raw = await read_topic(settings, names.batches, 40, isolation_level="read_uncommitted")
    assert len(raw) == 40


async def test_failed_transaction_is_aborted_and_redone_once(
    make_settings: Callable[..., Settings],
) -> None:
    """A transaction failing before its commit is aborted and redone: each batch once,
    each dead letter once, and the dead letter counted once."""
    settings = make_settings(partitions=1)
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    items = [tm_item(i, f"visitor-{i % 4}", now + i) for i in range(30)]
    broken = tm_item(30, "v", now + 30)
    del broken["data"]["ref"]
    await produce_tm(settings, [*items, broken])
    parked_before = dead_lettered("map", "missing_field")
    failures: list[TopicPartition] = []

    async def fail_once(tp: TopicPartition) -> None:
        if not failures:
            await processor._parts[tp].producer.flush()  # the batches reach the broker
            failures.append(tp)
            raise KafkaConnectionError("injected: connection lost before the commit")

    processor = MapProcessor(
        settings, consumer_options=FAST, before_commit=fail_once, backoff_base_s=0.01
    )
    async with running(processor):
        out = await wait_output(settings, 30)
    assert failures
    assert sorted(item_ids(out)) == sorted(i["id"] for i in items)
    raw = await read_topic(settings, names.batches, 31, isolation_level="read_uncommitted")
    assert len(raw) > 30  # the failed attempt's batches exist, aborted
    assert len(await read_topic(settings, names.dlq, 1)) == 1
    assert len(await read_topic(settings, names.dlq, 2, isolation_level="read_uncommitted")) == 2
    assert dead_lettered("map", "missing_field") - parked_before == 1
