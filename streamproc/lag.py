"""Consumer-group lag against the retention window that bounds it.

For every partition of the group's topics, every ``interval_s``:

- lag in records: the last stable offset (what a ``read_committed`` reader can reach)
  minus the group's committed offset;
- lag in seconds: the age of the oldest record not yet processed, i.e. now minus the
  timestamp of the first record at or after the committed offset (0 when caught up);
- retention headroom: the topic's ``retention.ms`` as the broker has it, minus the lag in
  seconds. At 0 the oldest unprocessed records start to expire unread: data loss.

The monitor reads the group's offsets from outside (admin API), so it reports the same
truth whichever member holds a partition, and keeps reporting while the group is stuck.
If a sample fails (broker away), the previous values stay and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streamproc import kafka, metrics, topics
from streamproc.config import Settings
from streamproc.lifecycle import Service, cancel_and_wait

log = logging.getLogger(__name__)


class LagMonitor(Service):
    """Samples one consumer group's lag and headroom into the ``streamproc_consumer_*`` gauges.

    ``start()``/``stop()`` are idempotent; ``sample()`` takes one reading now (tests use it).
    """

    def __init__(
        self,
        settings: Settings,
        group: str,
        topic_names: list[str],
        interval_s: float = 5.0,
        peek_timeout_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.group = group
        self.topic_names = topic_names
        self.interval_s = interval_s
        self.peek_timeout_s = peek_timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._retention_s: dict[str, float] = {}

    async def start(self) -> None:
        if self._task is not None:
            return
        self._admin = kafka.admin(self.settings.kafka)
        await self._admin.start()
        self._consumer = kafka.consumer(self.settings.kafka, group_id=None)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"lag-{self.group}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                # Retriable (a coordinator not elected yet, a broker away): the next sample
                # will do; the gauges keep their last values meanwhile.
                level = logging.INFO if exc.retriable else logging.WARNING
                log.log(level, "lag sample for group %s failed: %r", self.group, exc)
            except Exception:  # a failed sample must not stop the process
                log.warning("lag sample for group %s failed", self.group, exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def _retention(self, topic: str) -> float:
        if topic not in self._retention_s:
            ms = await topics.retention_ms(self.settings, topic)
            self._retention_s[topic] = float("inf") if ms is None else ms / 1000.0
        return self._retention_s[topic]

    async def sample(self) -> dict[TopicPartition, tuple[int, float, float]]:
        """One reading: ``{partition: (lag records, lag seconds, headroom seconds)}``."""
        if self._admin is None or self._consumer is None:
            raise RuntimeError("LagMonitor.sample() before start()")
        consumer = self._consumer
        tps = await kafka.partitions(self._admin, self.topic_names)
        if not tps:
            return {}
        committed_raw = await self._admin.list_consumer_group_offsets(self.group)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        committed: dict[TopicPartition, int] = {}
        for tp in tps:
            meta = committed_raw.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
            committed[tp] = max(position, begins[tp])
        lagging = {tp: committed[tp] for tp in tps if ends[tp] > committed[tp]}
        oldest_ms = await self._peek_timestamps(lagging)
        now = time.time()
        result: dict[TopicPartition, tuple[int, float, float]] = {}
        for tp in tps:
            records = max(0, ends[tp] - committed[tp])
            ts = oldest_ms.get(tp)
            seconds = max(0.0, now - ts / 1000.0) if records and ts is not None else 0.0
            headroom = await self._retention(tp.topic) - seconds
            labels = (self.group, tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG_RECORDS.labels(*labels).set(records)
            metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(seconds)
            metrics.CONSUMER_HEADROOM.labels(*labels).set(headroom)
            result[tp] = (records, seconds, headroom)
        return result

    async def _peek_timestamps(
        self, positions: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Timestamp of the first readable record at or after each position."""
        consumer = self._consumer
        if not positions or consumer is None:
            return {}
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        found: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + self.peek_timeout_s
        while len(found) < len(positions) and time.monotonic() < deadline:
            pending = [tp for tp in positions if tp not in found]
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending) * 4)
            for tp, records in batch.items():
                if records and tp not in found:
                    found[tp] = records[0].timestamp
                    consumer.pause(tp)
        consumer.unsubscribe()
        return found
