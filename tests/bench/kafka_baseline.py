"""The broker's own pace on this machine: the ceiling every other figure sits under."""

from __future__ import annotations

import time

from streamproc import kafka
from streamproc.config import Settings
from streamproc.topics import Topics
from tests.bench import Row

RECORDS = 50_000
VALUE = b"x" * 600  # about the size of a Ticketmatic item


async def bench(settings: Settings) -> list[Row]:
    """Records per second through an idempotent ``acks=all`` producer, then a consumer."""
    topic = Topics.for_prefix(settings.topic_prefix).ticketure
    producer = kafka.producer(settings.kafka, linger_ms=10, max_batch_size=256 * 1024)
    await producer.start()
    start = time.perf_counter()
    try:
        futures = [await producer.send(topic, VALUE, key=b"%d" % (i % 64)) for i in range(RECORDS)]
        for future in futures:
            await future
    finally:
        await producer.stop()
    produced = RECORDS / (time.perf_counter() - start)
    consumer = kafka.consumer(settings.kafka, topic, group_id=settings.topic_prefix + "bench")
    await consumer.start()
    start = time.perf_counter()
    seen = 0
    try:
        while seen < RECORDS:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(v) for v in batch.values())
    finally:
        await consumer.stop()
    consumed = RECORDS / (time.perf_counter() - start)
    return [
        Row("Kafka produce, idempotent acks=all, 600 B records", produced, "records/s"),
        Row("Kafka consume, read_committed", consumed, "records/s"),
    ]
