"""The one topic reader of the tests: a topic from its beginning, with one set of stopping rules.

- :meth:`TopicReader.until`: read until a condition on what was read holds (a count, ids);
  AssertionError naming the topic and the count after ``timeout_s``.
- :meth:`TopicReader.settle`: read on until nothing new comes for ``quiet_s``, so that
  "exactly" is checked too (stray extra records, duplicates).
- :meth:`TopicReader.to_end`: read to the end offsets the broker gives now (what was
  acknowledged before the call).

:func:`read_topic` is the common case in one call. Records are ``read_committed`` unless
asked otherwise, every partition of the topic assigned, no consumer group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streamproc import kafka
from streamproc.config import Settings


class TopicReader:
    """``async with TopicReader(settings, topic) as reader``; ``reader.records`` grows."""

    def __init__(
        self, settings: Settings, topic: str, *, isolation_level: str = "read_committed"
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.isolation_level = isolation_level
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> Self:
        consumer = kafka.consumer(
            self.settings.kafka, group_id=None, isolation_level=self.isolation_level
        )
        await consumer.start()
        try:
            self._partitions = await partitions_of(self.settings, self.topic)
            consumer.assign(self._partitions)
            await consumer.seek_to_beginning(*self._partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def read(self, timeout_ms: int = 200) -> int:
        """One fetch (waiting up to ``timeout_ms``); how many records were read in all."""
        if self._consumer is None:
            raise RuntimeError("TopicReader.read() outside `async with`")
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        for tp in sorted(batch):
            self.records += batch[tp]
        return len(self.records)

    async def until(
        self, done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool], timeout_s: float = 30.0
    ) -> None:
        """Read until ``done(records)`` holds (AssertionError after ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done(self.records):
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.topic}: only {len(self.records)} records after {timeout_s} s"
                )
            await self.read()

    async def settle(self, quiet_s: float = 1.0) -> None:
        """Read on until nothing new arrives for ``quiet_s``."""
        before = -1
        while before != len(self.records):
            before = len(self.records)
            await self.read(int(quiet_s * 1000))

    async def to_end(self, timeout_s: float = 30.0) -> None:
        """Read to the end offsets of now: every record acknowledged before the call."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("TopicReader.to_end() outside `async with`")
        ends = await consumer.end_offsets(self._partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while [tp for tp in self._partitions if await consumer.position(tp) < ends[tp]]:
            if loop.time() > deadline:
                raise AssertionError(f"{self.topic}: not read to its end in {timeout_s} s")
            await self.read()


async def read_topic(
    settings: Settings,
    topic: str,
    expected: int | None = None,
    *,
    timeout_s: float = 30.0,
    quiet_s: float = 1.0,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``: ``expected`` of them and then ``quiet_s`` without more, or
    (``expected`` None) to the end offsets of now. AssertionError if ``timeout_s`` passes
    before ``expected`` came."""
    async with TopicReader(settings, topic, isolation_level=isolation_level) as reader:
        if expected is None:
            await reader.to_end(timeout_s)
        else:
            await reader.until(lambda records: len(records) >= expected, timeout_s)
            await reader.settle(quiet_s)
        return reader.records


async def partitions_of(settings: Settings, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, from the admin client (AssertionError if it has none)."""
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        found = await kafka.partitions(admin, [topic])
    finally:
        await admin.close()
    assert found, f"topic {topic} does not exist"
    return found
