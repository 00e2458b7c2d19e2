"""Consumer-group lag against the retention window that bounds it.

For every partition of the group's topics, every ``interval_s``:

- lag in records: the last stable offset (what a ``read_committed`` reader can reach)
  minus the offset of the first record the group can still process at or after its
  committed offset. Offsets of a transactional topic also hold commit markers (and
  aborted records) that no consumer ever processes, so a group that processed everything
  sits one marker or more below the last stable offset: a peek that finds no readable
  record up to it says the lag is 0. With records waiting it is an upper bound (markers
  between them are counted too);
- lag in seconds: the age of the oldest record not yet processed, i.e. now minus the
  timestamp of the first record at or after the committed offset (0 when caught up);
- retention headroom: the topic's ``retention.ms`` as the broker has it, minus the lag in
  seconds. At 0 the oldest unprocessed records start to expire unread: data loss. The
  retention is read again every ``retention_refresh_s`` (60 s), so a changed topic config
  (``streamproc topics ensure``) shows within a minute, without a restart;
- a stuck transaction: how long the partition's last stable offset has stayed at one
  offset below its high watermark. A transaction that a crashed writer left open, or one
  the coordinator lost (a broker stopped mid-transaction), pins every ``read_committed``
  reader at that offset while committed records pile up behind it: healthy transactions
  last well under a second and the offset moves with each commit, so a value past
  ``kafka.transaction_timeout_ms`` means the broker is not settling it (see the runbook:
  ``kafka-transactions.sh``). Records waiting behind it are not counted as records lag
  (nothing can read them), but the pinned time counts as lag in seconds, so the headroom
  falls while it lasts.

Changelog topics the group's members restore at start-up (``changelogs``: the dedupe state
for map, the cursors for poll) are read to their end in ``read_committed`` too, so a
transaction pinned there stops a member's set-up: they are sampled for the stuck gauge only
(no group reads them, so they have no lag).

The monitor reads the group's offsets from outside (admin API), so it reports the same
truth whichever member holds a partition, and keeps reporting while the group is stuck.
If a sample fails (broker away), the previous values stay and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalStateError, KafkaError

from streamproc import kafka, metrics, topics
from streamproc.config import Settings
from streamproc.lifecycle import Service, cancel_and_wait

log = logging.getLogger(__name__)


class Watch(NamedTuple):
    """What a role's lag monitor samples: its group's lag on ``topics`` and stuck
    transactions on the ``changelogs`` its members restore at start-up."""

    group: str
    topics: Sequence[str]
    changelogs: Sequence[str] = ()


class LagMonitor(Service):
    """Samples one consumer group's lag and headroom into the ``streamproc_consumer_*`` gauges.

    ``start()``/``stop()`` are idempotent; ``sample()`` takes one reading now (tests use it).
    """

    @classmethod
    def of(cls, settings: Settings, watch: Watch, interval_s: float) -> LagMonitor:
        return cls(
            settings, watch.group, list(watch.topics), interval_s, changelogs=watch.changelogs
        )

    def __init__(
        self,
        settings: Settings,
        group: str,
        topic_names: list[str],
        interval_s: float = 5.0,
        peek_timeout_s: float = 2.0,
        retention_refresh_s: float = 60.0,
        changelogs: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.group = group
        self.topic_names = topic_names
        self.changelogs = list(changelogs)
        self.interval_s = interval_s
        self.peek_timeout_s = peek_timeout_s
        self.retention_refresh_s = retention_refresh_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._probe: AIOKafkaConsumer | None = None  # read_uncommitted: the high watermark
        self._pinned: dict[TopicPartition, tuple[int, float]] = {}  # (LSO, since monotonic)
        self._task: asyncio.Task[None] | None = None
        self._retention_s: dict[str, tuple[float, float]] = {}  # topic: (seconds, read at)
        # One sample at a time: a peek assigns, seeks and unassigns the shared consumer, so
        # a second peek running beside it would lose its assignment and never settle.
        self._sampling = asyncio.Lock()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._admin = kafka.admin(self.settings.kafka)
        await self._admin.start()
        self._consumer = kafka.consumer(self.settings.kafka, group_id=None)
        await self._consumer.start()
        self._probe = kafka.consumer(
            self.settings.kafka, group_id=None, isolation_level="read_uncommitted"
        )
        await self._probe.start()
        self._task = asyncio.create_task(self._run(), name=f"lag-{self.group}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        for consumer in (self._consumer, self._probe):
            if consumer is not None:
                await consumer.stop()
        self._consumer = self._probe = None
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
        """The topic's retention in seconds, read again once ``retention_refresh_s`` passed."""
        known = self._retention_s.get(topic)
        now = time.monotonic()
        if known is None or now - known[1] >= self.retention_refresh_s:
            ms = await topics.retention_ms(self.settings, topic)
            known = (float("inf") if ms is None else ms / 1000.0, now)
            self._retention_s[topic] = known
        return known[0]

    async def sample(self) -> dict[TopicPartition, tuple[int, float, float]]:
        """One reading: ``{partition: (lag records, lag seconds, headroom seconds)}``."""
        async with self._sampling:
            return await self._sample()

    async def _sample(self) -> dict[TopicPartition, tuple[int, float, float]]:
        if self._admin is None or self._consumer is None or self._probe is None:
            raise RuntimeError("LagMonitor.sample() before start()")
        consumer = self._consumer
        tps = await kafka.partitions(self._admin, self.topic_names)
        logs = await kafka.partitions(self._admin, self.changelogs)
        if logs:
            stable = await consumer.end_offsets(logs)
            pinned = self._stuck(stable, await self._probe.end_offsets(logs))
            for tp in logs:
                labels = (self.group, tp.topic, str(tp.partition))
                metrics.CONSUMER_STUCK_TXN.labels(*labels).set(pinned.get(tp, 0.0))
        if not tps:
            return {}
        committed_raw = await self._admin.list_consumer_group_offsets(self.group)
        ends = await consumer.end_offsets(tps)
        stuck_s = self._stuck(ends, await self._probe.end_offsets(tps))
        begins = await consumer.beginning_offsets(tps)
        committed: dict[TopicPartition, int] = {}
        for tp in tps:
            meta = committed_raw.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
            committed[tp] = max(position, begins[tp])
        lagging = {tp: committed[tp] for tp in tps if ends[tp] > committed[tp]}
        oldest = await self._peek(lagging, ends)
        now = time.time()
        result: dict[TopicPartition, tuple[int, float, float]] = {}
        for tp in tps:
            first = oldest.get(tp)
            if tp not in lagging or first == _NOTHING:
                records, seconds = 0, 0.0
            elif first is None:  # not seen within the peek: count from the commit
                records, seconds = ends[tp] - committed[tp], 0.0
            else:
                records = ends[tp] - first[0]
                seconds = max(0.0, now - first[1] / 1000.0)
            seconds = max(seconds, stuck_s.get(tp, 0.0))
            headroom = await self._retention(tp.topic) - seconds
            labels = (self.group, tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG_RECORDS.labels(*labels).set(records)
            metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(seconds)
            metrics.CONSUMER_HEADROOM.labels(*labels).set(headroom)
            metrics.CONSUMER_STUCK_TXN.labels(*labels).set(stuck_s.get(tp, 0.0))
            result[tp] = (records, seconds, headroom)
        return result

    def _stuck(
        self, stable: dict[TopicPartition, int], high: dict[TopicPartition, int]
    ) -> dict[TopicPartition, float]:
        """Seconds each partition's last stable offset has stayed put below its high
        watermark (partitions not pinned are left out)."""
        now = time.monotonic()
        stuck: dict[TopicPartition, float] = {}
        for tp, lso in stable.items():
            if high.get(tp, lso) <= lso:
                self._pinned.pop(tp, None)
                continue
            pinned = self._pinned.get(tp)
            if pinned is None or pinned[0] != lso:
                pinned = self._pinned[tp] = (lso, now)
            stuck[tp] = now - pinned[1]
        return stuck

    async def _peek(
        self, positions: dict[TopicPartition, int], ends: dict[TopicPartition, int]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(offset, timestamp) of the first readable record at or after each position, or
        :data:`_NOTHING` where the reader passed the end offset without one (markers and
        aborted records only); partitions not settled within ``peek_timeout_s`` are left out.
        """
        consumer = self._consumer
        if not positions or consumer is None:
            return {}
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        found: dict[TopicPartition, tuple[int, int]] = {}
        deadline = time.monotonic() + self.peek_timeout_s
        while len(found) < len(positions) and time.monotonic() < deadline:
            pending = [tp for tp in positions if tp not in found]
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending) * 4)
            for tp in pending:
                records = batch.get(tp)
                if records:
                    found[tp] = (records[0].offset, records[0].timestamp)
                elif await _position(consumer, tp) >= ends[tp]:
                    found[tp] = _NOTHING
                else:
                    continue
                consumer.pause(tp)
        consumer.unsubscribe()
        return found


_NOTHING = (-1, -1)  # no readable record between the position and the end offset


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """The reader's position, or -1 while aiokafka has none to give (an assignment being
    updated): the partition is then simply not settled yet in this peek."""
    try:
        position: int = await consumer.position(tp)
    except IllegalStateError:
        return -1
    return position
