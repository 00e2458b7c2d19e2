"""One page, one Kafka transaction: the page's records and the account's cursor.

Records are grouped into record batches per partition, in page order, instead of being
sent one by one: a 1,000-item page costs a few batch appends per item instead of a
coroutine, a future and a partitioner call each, which is what lets one poller drain a
backlog at more than 10,000 items per second. Partitions follow Kafka's default
partitioner (murmur2 of the key), as any other producer of these keys would choose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streamproc.formats.ticketmatic import Cursor, encode_cursor
from streamproc.sources.ticketmatic import cursor as cursors
from streamproc.sources.ticketmatic.page import OutRecord

_MAX_CACHED_KEYS = 50_000


class PageWriter:
    """Commits pages through one transactional producer (owned by the caller)."""

    def __init__(self, producer: AIOKafkaProducer, cursors_topic: str, account: str) -> None:
        self.producer = producer
        self.cursors_topic = cursors_topic
        self.account = account
        self._partition_counts: dict[str, int] = {}
        self._partitions: dict[tuple[str, bytes], int] = {}

    async def commit(self, records: Sequence[OutRecord], cursor: Cursor) -> None:
        """``records`` and ``cursor`` in one transaction; any KafkaError means not committed
        (or not known to be: the caller must re-read the cursor from Kafka)."""
        producer = self.producer
        await producer.begin_transaction()
        sent: list[asyncio.Future[object]] = []
        batches: list[Any] = []
        try:
            sent += await self._send(records)
            count = await self._partition_count(self.cursors_topic)
            sent.append(
                await producer.send(
                    self.cursors_topic,
                    encode_cursor(cursor),
                    key=self.account.encode(),
                    partition=cursors.cursor_partition(self.account, count),
                )
            )
            batches = _queued_batches(producer)
            await producer.commit_transaction()
        except BaseException:
            # When a fenced producer gives up, aiokafka fails the batches it could not
            # send, including a drain waiter per batch that nobody awaits: read those
            # errors so they are not reported as lost at garbage collection.
            for batch in batches:
                waiter = getattr(batch, "_drain_waiter", None)
                if isinstance(waiter, asyncio.Future):
                    waiter.add_done_callback(_seen)
            raise
        finally:
            # The commit reports the outcome; the futures of the batches only repeat it,
            # and after a failed commit some fail later (when the producer gives up).
            for future in sent:
                future.add_done_callback(_seen)

    async def _send(self, records: Sequence[OutRecord]) -> list[asyncio.Future[object]]:
        producer = self.producer
        builders: dict[tuple[str, int], Any] = {}  # aiokafka's BatchBuilder
        futures: list[asyncio.Future[object]] = []
        for record in records:
            partition = await self._partition(record.topic, record.key)
            slot = (record.topic, partition)
            builder = builders.get(slot)
            if builder is None:
                builder = builders[slot] = producer.create_batch()
            if builder.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            ):
                continue
            # Full: send it and start the next batch of this partition (order is kept).
            futures.append(await producer.send_batch(builder, record.topic, partition=partition))
            builder = builders[slot] = producer.create_batch()
            if not builder.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            ):
                del builders[slot]
                futures.append(
                    await producer.send(
                        record.topic,
                        record.value,
                        key=record.key,
                        partition=partition,
                        headers=record.headers,
                    )
                )
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    async def _partition_count(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(await self.producer.partitions_for(topic))
            self._partition_counts[topic] = count
        return count

    async def _partition(self, topic: str, key: bytes) -> int:
        cached = self._partitions.get((topic, key))
        if cached is not None:
            return cached
        if len(self._partitions) > _MAX_CACHED_KEYS:
            self._partitions.clear()
        count = await self._partition_count(topic)
        partition = int(murmur2(key) & 0x7FFFFFFF) % count
        self._partitions[(topic, key)] = partition
        return partition


def _seen(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _queued_batches(producer: AIOKafkaProducer) -> list[Any]:
    """aiokafka's record batches queued or in flight (private attributes, read only)."""
    accumulator = getattr(producer, "_message_accumulator", None)
    queued = [b for q in getattr(accumulator, "_batches", {}).values() for b in q]
    return queued + list(getattr(accumulator, "_pending_batches", ()))
