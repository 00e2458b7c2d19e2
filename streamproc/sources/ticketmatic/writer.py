"""One page, one Kafka transaction: the page's records and the account's cursor.

Records go out as whole record batches per partition, in page order
(:class:`streamproc.kafka.BatchWriter`), instead of one by one: a 1,000-item page costs a
few batch appends per item instead of a coroutine, a future and a partitioner call each,
which is what lets one poller drain a backlog at more than 10,000 items per second.
Partitions follow Kafka's default partitioner (murmur2 of the key), as any other producer
of these keys would choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from streamproc import kafka
from streamproc.formats.ticketmatic import Cursor, encode_cursor
from streamproc.sources.ticketmatic import cursor as cursors
from streamproc.sources.ticketmatic.page import OutRecord


class PageWriter:
    """Commits pages through one transactional producer (owned by the caller)."""

    def __init__(self, producer: AIOKafkaProducer, cursors_topic: str, account: str) -> None:
        self.producer = producer
        self.cursors_topic = cursors_topic
        self.account = account
        self._keys = kafka.KeyPartitions(size=50_000)
        self._cursor_partition: int | None = None

    async def commit(self, records: Sequence[OutRecord], cursor: Cursor) -> None:
        """``records`` and ``cursor`` in one transaction; any KafkaError means not committed
        (or not known to be: the caller must re-read the cursor from Kafka)."""
        producer = self.producer
        await producer.begin_transaction()
        batches: list[Any] = []
        try:
            out = kafka.BatchWriter(producer, self._keys)
            for record in records:
                await out.add(record.topic, record.key, record.value, record.headers)
            await out.add(
                self.cursors_topic,
                self.account.encode(),
                encode_cursor(cursor),
                [],
                partition=await self._cursor_partition_of(),
            )
            await out.flush()
            batches = kafka.queued_batches(producer)
            await producer.commit_transaction()
        except BaseException:
            kafka.mark_drains_seen(batches)
            raise

    async def _cursor_partition_of(self) -> int:
        if self._cursor_partition is None:
            count = len(await self.producer.partitions_for(self.cursors_topic))
            self._cursor_partition = cursors.cursor_partition(self.account, count)
        return self._cursor_partition
