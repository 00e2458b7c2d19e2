"""The real broker: round trips, transactions and topic management."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from streamproc import kafka, topics
from streamproc.config import MAX_LETTER_BYTES, Settings
from streamproc.formats import envelope
from tests.topics import read_topic

pytestmark = pytest.mark.kafka


async def test_produce_consume_round_trip(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """Records produced with headers come back with the same keys, values and headers."""
    topic = topics.Topics.for_prefix(kafka_settings.topic_prefix).ticketure
    producer = kafka.producer(kafka_settings.kafka)
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(
                topic, f"v{i}".encode(), key=b"order-1", headers=[(envelope.H_ITEM_ID, b"%d" % i)]
            )
    finally:
        await producer.stop()
    got = await read_topic(kafka_settings, topic)
    # One key: one partition, in produce order.
    assert [m.value for m in got] == [f"v{i}".encode() for i in range(20)]
    assert [envelope.header(m.headers, envelope.H_ITEM_ID) for m in got] == [
        str(i) for i in range(20)
    ]


@pytest.mark.parametrize("codec", ["lz4", "zstd", "snappy", "gzip", "none"])
async def test_producers_compress_with_the_configured_codec(
    kafka_settings: Settings, kafka_log_dirs: Path, unique: Callable[[str], str], codec: str
) -> None:
    """Every codec round-trips the records; on the broker's disk they take what it saves."""
    settings = msgspec.structs.replace(
        kafka_settings.kafka, compression_type=cast(Any, codec), client_id="compress"
    )
    topic = topics.Topics.for_prefix(kafka_settings.topic_prefix).batches
    values = [
        orjson.dumps({"source_request_id": f"req-{i}", "events": [{"n": "Hamlet " * 90}]})
        for i in range(300)
    ]
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=b"one-key") for value in values]
        partitions = {(await future).partition for future in sent}
    finally:
        await producer.stop()
    got = [r.value for r in await read_topic(kafka_settings, topic)]
    assert got == values
    (partition,) = partitions
    on_disk = sum(f.stat().st_size for f in (kafka_log_dirs / f"{topic}-{partition}").glob("*.log"))
    raw = sum(len(value) for value in values)
    if codec == "none":
        assert on_disk > raw
    else:
        assert on_disk < raw / 5, f"{codec}: {on_disk} bytes on disk for {raw} bytes of records"


async def test_transaction_commits_output_with_offsets_and_hides_aborted(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """Committed transactional output and its offsets appear together; aborted never."""
    names = topics.Topics.for_prefix(kafka_settings.topic_prefix)
    plain = kafka.producer(kafka_settings.kafka)
    await plain.start()
    for i in range(10):
        await plain.send_and_wait(names.ticketure, b"in%d" % i, key=b"k%d" % (i % 3))
    await plain.stop()

    group = unique("map")
    consumer = kafka.consumer(kafka_settings.kafka, names.ticketure, group_id=group)
    tx = kafka.producer(kafka_settings.kafka, transactional_id=unique("tx"))
    await consumer.start()
    await tx.start()
    try:
        seen: dict[TopicPartition, list[bytes]] = {}
        while sum(len(v) for v in seen.values()) < 10:
            for tp, msgs in (await consumer.getmany(timeout_ms=5000)).items():
                seen.setdefault(tp, []).extend(m.value for m in msgs)
        positions = {tp: await consumer.position(tp) for tp in seen}
        async with tx.transaction():
            for values in seen.values():
                for value in values:
                    await tx.send(names.batches, b"out-" + value)
            await tx.send_offsets_to_transaction(positions, group)
        await tx.begin_transaction()
        await tx.send(names.batches, b"aborted")
        await tx.abort_transaction()
        committed = {tp: await consumer.committed(tp) for tp in positions}
    finally:
        await tx.stop()
        await consumer.stop()
    assert committed == positions
    out = await read_topic(kafka_settings, names.batches, 10, quiet_s=0.5)
    values = sorted(r.value for r in out if r.value is not None)
    assert values == sorted(b"out-in%d" % i for i in range(10))


async def test_topics_ensure_twice(make_settings: Callable[..., Settings]) -> None:
    """`topics ensure` creates every topic with its policy, and a second run changes nothing."""
    settings = make_settings(partitions=2)
    first = await topics.ensure(settings)
    assert sum(line.startswith("created") for line in first) == 6
    second = await topics.ensure(settings)
    assert all(line.startswith("kept") for line in second), second
    described = {row["role"]: row for row in await topics.describe(settings)}
    assert described["cursors"]["cleanup.policy"] == "compact"
    assert described["dedupe"]["cleanup.policy"] == "compact"
    assert described["dedupe"]["partitions"] == 2
    assert described["ticketmatic"]["cleanup.policy"] == "delete"
    assert described["ticketmatic"]["retention.ms"] == str(settings.topics.source_retention_ms)
    # Dead letters are records plus headers: only the DLQ takes more than the default.
    assert described["dlq"]["max.message.bytes"] == str(MAX_LETTER_BYTES)
    assert int(described["batches"]["max.message.bytes"] or 0) < MAX_LETTER_BYTES
    assert await topics.retention_ms(settings, described["batches"]["topic"]) == (
        settings.topics.batches_retention_ms
    )


async def test_topics_ensure_aligns_the_config_of_existing_topics(
    make_settings: Callable[..., Settings],
) -> None:
    """A DLQ made before it took 2 MiB letters gets the limit from `topics ensure`."""
    settings = make_settings(partitions=1)
    dlq = topics.Topics.for_prefix(settings.topic_prefix).dlq
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(dlq, 1, 1)])  # the broker's defaults
    finally:
        await admin.close()
    report = await topics.ensure(settings)
    assert any(line.startswith("kept") and dlq in line for line in report), report
    described = {row["role"]: row for row in await topics.describe(settings)}
    assert described["dlq"]["max.message.bytes"] == str(MAX_LETTER_BYTES)
    assert described["dlq"]["retention.ms"] == str(settings.topics.dlq_retention_ms)


async def test_topics_ensure_grows_partitions(make_settings: Callable[..., Settings]) -> None:
    """Raising the partition count grows existing topics instead of failing."""
    await topics.ensure(make_settings(partitions=1))
    report = await topics.ensure(make_settings(partitions=2))
    assert any(line.startswith("grew") and "ticketure.audit" in line for line in report)


# Kafka's own murmur2 test vectors (UtilsTest.testMurmur2 in Apache Kafka's clients): the
# partition Java's default partitioner gives each key on 3 partitions, found without us.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


async def test_the_batch_writer_keeps_javas_partitions_and_the_order_per_key(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """3,000 records of 2 KB through BatchWriter in one transaction (hundreds of full
    batches handed over): each on the partition Java's clients would pick for its key, in
    the order written, none lost or doubled; a record given a partition goes there."""
    names = topics.Topics.for_prefix(kafka_settings.topic_prefix)
    keys = list(JAVA_MURMUR2)
    written = [(keys[i % len(keys)], b"%06d" % i + b"x" * 2000) for i in range(3000)]
    producer = kafka.producer(kafka_settings.kafka, transactional_id=unique("tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        out = kafka.BatchWriter(producer, kafka.KeyPartitions(size=4))  # the cache starts over
        for key, value in written:
            await out.add(names.batches, key, value, [(envelope.H_ITEM_ID, value[:6])])
        await out.add(names.batches, b"abc", b"pinned", [], partition=0)
        await out.flush()
        await producer.commit_transaction()
    finally:
        await producer.stop()

    got = [
        (r.partition, r.key, r.value, envelope.header(r.headers, envelope.H_ITEM_ID))
        for r in await read_topic(kafka_settings, names.batches)
    ]
    assert len(got) == len(written) + 1
    assert (0, b"abc", b"pinned", None) in got
    records = [g for g in got if g[2] != b"pinned"]
    for key, expected in JAVA_MURMUR2.items():
        on = {p for p, k, _, _ in records if k == key}
        assert on == {(expected & 0x7FFFFFFF) % 3}, key
        assert [v for _, k, v, _ in records if k == key] == [v for k, v in written if k == key]
    assert all(item_id == value[:6].decode() for _, _, value, item_id in records)
