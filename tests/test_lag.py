"""Lag in records and seconds, and retention headroom, against a real consumer group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import pytest
from aiokafka import TopicPartition

from streamproc import kafka
from streamproc.config import Settings
from streamproc.lag import LagMonitor
from streamproc.topics import Topics, ensure
from tests import localkafka
from tests.metrics import sample
from tests.procs import wait_for
from tests.transactions import open_transaction

pytestmark = pytest.mark.kafka

HOUR_MS = 3600 * 1000
STUCK = "streamproc_consumer_stuck_transaction_seconds"


def gauge(series: str, group: str, topic: str, partition: int) -> float:
    return sample(series, group=group, topic=topic, partition=str(partition))


async def test_known_lag_then_caught_up(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """Records an hour old, unread: lag reads 1 h and headroom retention - 1 h; then 0."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).ticketure
    group = unique("lagged")
    retention_s = kafka_settings.topics.source_retention_ms / 1000
    written_at = int(time.time() * 1000) - HOUR_MS
    producer = kafka.producer(kafka_settings.kafka)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(
                topic, b"v%d" % i, key=b"k", partition=0, timestamp_ms=written_at + i * 1000
            )
    finally:
        await producer.stop()

    # The group exists with a committed offset of 0 on partition 0: a paused consumer.
    consumer = kafka.consumer(kafka_settings.kafka, group_id=group)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.commit({tp: 0})

    async with LagMonitor(kafka_settings, group, [topic], interval_s=60) as monitor:
        reading = await monitor.sample()
        records, seconds, headroom = reading[tp]
        truth = time.time() - written_at / 1000
        assert records == 5
        assert abs(seconds - truth) < 5
        assert abs(headroom - (retention_s - truth)) < 5
        assert gauge("streamproc_consumer_lag_records", group, topic, 0) == 5
        assert abs(gauge("streamproc_consumer_lag_seconds", group, topic, 0) - truth) < 5
        assert reading[TopicPartition(topic, 1)] == (0, 0.0, retention_s)

        # Process them all and commit: the lag returns to 0 and the headroom to the full window.
        consumer.seek(tp, 0)
        got = await consumer.getmany(tp, timeout_ms=5000)
        assert len(got[tp]) == 5
        await consumer.commit({tp: got[tp][-1].offset + 1})
        records, seconds, headroom = (await monitor.sample())[tp]
        assert (records, seconds, headroom) == (0, 0.0, retention_s)
        assert gauge("streamproc_consumer_lag_seconds", group, topic, 0) == 0
    await consumer.stop()


async def test_group_without_commits_counts_from_the_beginning(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """A group that never committed lags by every record in the topic."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).batches
    producer = kafka.producer(kafka_settings.kafka)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(
                topic, b"x", partition=2, timestamp_ms=int(time.time() * 1000) - 10_000 - i
            )
    finally:
        await producer.stop()
    async with LagMonitor(kafka_settings, unique("fresh"), [topic], interval_s=60) as monitor:
        records, seconds, _ = (await monitor.sample())[TopicPartition(topic, 2)]
    assert records == 3
    assert 9 < seconds < 20


async def test_a_drained_transactional_topic_lags_zero_records(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """Commit markers and aborted records are not lag: a group past every record reads 0."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).batches
    tp = TopicPartition(topic, 1)
    producer = kafka.producer(kafka_settings.kafka, transactional_id=unique("lag-tx"))
    await producer.start()
    try:
        for committed in (True, True, False):
            await producer.begin_transaction()
            for _ in range(3):
                await producer.send_and_wait(topic, b"x", partition=1)
            if committed:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    group = unique("drained")
    consumer = kafka.consumer(kafka_settings.kafka, group_id=group)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = await consumer.getmany(tp, timeout_ms=5000)
        assert len(got[tp]) == 6  # the aborted three are never read
        last = got[tp][-1].offset
        # A generous peek: on a loaded machine the reader may take seconds to pass markers.
        monitor = LagMonitor(kafka_settings, group, [topic], interval_s=60, peek_timeout_s=20)
        async with monitor:
            await consumer.commit({tp: last - 2})  # two of the six not processed yet
            records, seconds, _ = (await monitor.sample())[tp]
            assert records >= 2
            assert seconds >= 0
            await consumer.commit({tp: last + 1})  # what a consumer commits after the last
            end = (await consumer.end_offsets([tp]))[tp]
            assert end > last + 1  # markers and aborted records lie beyond it
            assert (await monitor.sample())[tp][:2] == (0, 0.0)
            assert gauge("streamproc_consumer_lag_records", group, topic, 1) == 0
    finally:
        await consumer.stop()


async def test_samples_side_by_side_both_settle(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """A caller's sample beside the monitor's own: both read the same lag (one consumer is
    shared, so they take turns; a second peek once lost its assignment to the first)."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).batches
    tp = TopicPartition(topic, 0)
    producer = kafka.producer(kafka_settings.kafka)
    await producer.start()
    try:
        for _ in range(4):
            await producer.send_and_wait(topic, b"x", partition=0)
    finally:
        await producer.stop()
    monitor = LagMonitor(kafka_settings, unique("twice"), [topic], interval_s=60)
    async with monitor:
        readings = await asyncio.gather(*(monitor.sample() for _ in range(3)))
    assert [reading[tp][0] for reading in readings] == [4, 4, 4]


async def test_a_retention_change_shows_without_a_restart(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """After `topics ensure` with a longer retention, the headroom follows at the next read."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).ticketure
    group = unique("retention")
    before_s = kafka_settings.topics.source_retention_ms / 1000
    async with LagMonitor(
        kafka_settings, group, [topic], interval_s=60, retention_refresh_s=0
    ) as monitor:
        assert (await monitor.sample())[TopicPartition(topic, 0)][2] == before_s
        longer = msgspec.structs.replace(
            kafka_settings,
            topics=msgspec.structs.replace(
                kafka_settings.topics, source_retention_ms=int(before_s * 2000)
            ),
        )
        await ensure(longer)
        assert (await monitor.sample())[TopicPartition(topic, 0)][2] == before_s * 2


async def test_a_hanging_transaction_is_seen_and_the_tool_clears_it(
    kafka_settings: Settings, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """An open transaction pins one partition: its stuck time grows; abort clears it."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).batches
    stuck_tp, free_tp = TopicPartition(topic, 1), TopicPartition(topic, 0)
    group = unique("stuck")
    writer = kafka.producer(kafka_settings.kafka, transactional_id=unique("ok"))
    await writer.start()
    try:
        async with open_transaction(kafka_settings.kafka, unique("hang"), topic, 1) as hanging:
            for partition in (0, 1):  # committed records behind the open one, and beside it
                async with writer.transaction():
                    await writer.send_and_wait(topic, b"ok", partition=partition)
            async with LagMonitor(kafka_settings, group, [topic], interval_s=60) as monitor:
                await monitor.sample()
                await asyncio.sleep(2.0)
                reading = await monitor.sample()
                stuck = gauge(STUCK, group, topic, 1)
                assert stuck >= 1.5
                assert gauge(STUCK, group, topic, 0) == 0
                assert reading[stuck_tp][1] >= stuck  # the pinned time counts as lag in s
                assert reading[free_tp][0] >= 1  # its record (and marker), readable
                # Kafka's own remedy, shipped with the local broker's jars.
                args = ["abort", "--topic", topic, "--partition", "1"]
                args += ["--start-offset", str(hanging.offset)]
                code = await asyncio.to_thread(localkafka.transactions, kafka_bootstrap, args)
                assert code == 0
                hanging.open = False  # ended by the tool, not by its producer
                await wait_for(
                    lambda: _unpinned(monitor, group, topic),
                    timeout_s=30,
                    what="partition 1 freed",
                )
    finally:
        await writer.stop()


async def _unpinned(monitor: LagMonitor, group: str, topic: str) -> bool:
    await monitor.sample()
    return gauge(STUCK, group, topic, 1) == 0


async def test_a_hanging_transaction_on_a_changelog_is_seen(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """The dedupe changelog map restores from has no group reading it, yet a transaction
    pinned there shows in the stuck gauge under the map group, and clears once aborted."""
    topic = Topics.for_prefix(kafka_settings.topic_prefix).dedupe
    group = unique("changelog")
    writer = kafka.producer(kafka_settings.kafka, transactional_id=unique("ok"))
    await writer.start()
    try:
        async with open_transaction(
            kafka_settings.kafka, unique("hang"), topic, 1, key=b"held"
        ) as hanging:
            async with writer.transaction():
                await writer.send_and_wait(topic, b"ok", key=b"k", partition=1)
            async with LagMonitor(
                kafka_settings, group, [], interval_s=60, changelogs=[topic]
            ) as monitor:
                assert await monitor.sample() == {}  # no lag: nothing consumes it as a group
                await asyncio.sleep(2.0)
                await monitor.sample()
                assert gauge(STUCK, group, topic, 1) >= 1.5
                assert gauge(STUCK, group, topic, 0) == 0
                await hanging.abort()
                await wait_for(
                    lambda: _unpinned(monitor, group, topic),
                    timeout_s=30,
                    what="changelog partition 1 freed",
                )
    finally:
        await writer.stop()
