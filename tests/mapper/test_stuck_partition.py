"""A partition whose set-up cannot finish holds no other partition of the process.

A separate producer holds a transaction open on one partition of the dedupe changelog, so
that partition's last stable offset stays below its high watermark (what a broker stopped
mid-transaction left behind in a chaos run). Restoring its state must wait for that
transaction (or it would miss ids); every other partition must flow meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from streamproc import topics
from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.mapper.processor import MapProcessor
from streamproc.topics import Topics
from tests.mapper.test_processor import (
    FAST,
    item_ids,
    produce_tm,
    read_topic,
    running,
    tm_item,
    wait_output,
)
from tests.metrics import value
from tests.procs import wait_for
from tests.transactions import open_transaction

pytestmark = pytest.mark.kafka

STUCK = 1


def waiting_s(topic: str, partition: int) -> float | None:
    return value("streamproc_map_partition_waiting_seconds", topic=topic, partition=str(partition))


async def test_a_changelog_partition_held_by_an_open_transaction_holds_only_itself(
    make_settings: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = make_settings(partitions=3)
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    async with open_transaction(
        settings.kafka, unique("holder"), names.dedupe, STUCK, key=b"held"
    ) as holder:
        now = int(time.time() * 1000)
        items = [tm_item(i, f"visitor-{i}", now + i) for i in range(40)]
        await produce_tm(settings, items)
        where = {
            o.headers[envelope.H_ITEM_ID]: o.partition
            for o in await read_topic(settings, names.ticketmatic, len(items))
        }
        held = {i for i, p in where.items() if p == STUCK}
        free = set(where) - held
        assert held, where
        assert free, where

        # Set-up still inside its restore (bound 60 s): the other partitions flow, the
        # stuck one is measured and named, and SIGTERM's path stays within its bound.
        processor = MapProcessor(
            settings, consumer_options=FAST, restore_timeout_s=60, shutdown_timeout_s=3
        )
        async with running(processor):
            out = await wait_output(settings, len(free))
            assert set(item_ids(out)) == free
            first = waiting_s(names.ticketmatic, STUCK)
            assert first is not None
            assert first > 0
            await wait_for(lambda: (waiting_s(names.ticketmatic, STUCK) or 0) > first + 1)
            for partition in {0, 1, 2} - {STUCK}:
                assert waiting_s(names.ticketmatic, partition) == 0
            assert not processor.health.ready()
            reason = processor.health.report()["map partitions"]["reason"]
            assert f"{names.ticketmatic}[{STUCK}]" in str(reason)
            assert f"{names.ticketure}[{STUCK}]" in str(reason)
            assert "not set up for" in str(reason)
            assert f"[{STUCK + 1}]" not in str(reason)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3 + 5, "stop took longer than its bound"

        # A set-up that times out says why and retries on its own (never fatal); once the
        # transaction ends, the partition is set up and its items follow, each once.
        processor = MapProcessor(
            settings,
            consumer_options=FAST,
            restore_timeout_s=2,
            backoff_base_s=0.2,
            backoff_cap_s=1,
            retry_timeout_s=1,
        )
        async with running(processor) as processor:

            def named() -> bool:
                report = processor.health.report().get("map partitions", {})
                return "held by an open transaction" in str(report.get("reason"))

            await wait_for(named, timeout_s=30)
            await wait_for(lambda: (waiting_s(names.ticketmatic, STUCK) or 0) > 3)
            await holder.abort()
            out = await wait_output(settings, len(items))
            await wait_for(lambda: waiting_s(names.ticketmatic, STUCK) == 0)
            assert processor.health.ready()
        assert sorted(item_ids(out)) == sorted(where)
