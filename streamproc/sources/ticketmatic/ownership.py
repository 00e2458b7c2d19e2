"""One active poller per account across replicas, through a Kafka consumer group.

Every replica joins the group ``{prefix}streamproc-poll`` over the cursors topic and owns
the accounts whose cursor partition (``cursor_partition(account, n)``) it is assigned.
It never reads records through the group: its partitions stay paused and the group only
hands out ownership. When a replica dies, the coordinator notices after the session
timeout and gives its partitions to the others, which take the accounts over; a replica
that missed its eviction (stalled, partitioned) cannot commit anyway, because the new
owner's transactional producer fences it.

With one cursor partition (the default) one replica polls every account and the others
stand by; with more partitions the accounts spread over the replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from streamproc import kafka
from streamproc.config import Settings
from streamproc.lifecycle import Service
from streamproc.sources.ticketmatic.cursor import cursor_partition
from streamproc.topics import Topics

log = logging.getLogger(__name__)

Callback = Callable[[set[str]], Awaitable[None]]


def group_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}streamproc-poll"


class Ownership(Service):
    """Group membership that calls ``acquire(accounts)`` and ``release(accounts)``.

    ``release`` is awaited before the partitions go to another replica, so it must stop
    the accounts' pollers (within the rebalance timeout); ``acquire`` (called after every
    assignment, with no accounts on a standby) should only start them. ``run(stop)``
    keeps the membership alive until ``stop`` is set; ``stop()`` leaves the group (the
    caller releases its accounts first).
    """

    def __init__(
        self,
        settings: Settings,
        accounts: Sequence[str],
        *,
        acquire: Callback,
        release: Callback,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
    ) -> None:
        self.settings = settings
        self.accounts = list(accounts)
        self.topic = Topics.for_prefix(settings.topic_prefix).cursors
        self._acquire = acquire
        self._release = release
        self.owned: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms

    def accounts_of(self, partitions: Sequence[TopicPartition], count: int) -> set[str]:
        """The configured accounts whose cursor partition is among ``partitions``."""
        mine = {tp.partition for tp in partitions if tp.topic == self.topic}
        return {a for a in self.accounts if cursor_partition(a, count) in mine}

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = kafka.consumer(
            self.settings.kafka,
            group_id=group_id(self.settings),
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            # The group hands out ownership only; nothing is read through it.
            auto_offset_reset="latest",
        )
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Listener(self, consumer))
        self._consumer = consumer

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the membership alive (aiokafka wants a fetch call now and then)."""
        await self.start()
        assert self._consumer is not None  # noqa: S101 -- set by start()
        while not stop.is_set():
            await self._consumer.getmany(timeout_ms=500)

    async def stop(self) -> None:
        """Leave the group, so that another replica takes the accounts over at once."""
        if self._consumer is None:
            return
        consumer, self._consumer = self._consumer, None
        await consumer.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ownership: Ownership, consumer: AIOKafkaConsumer) -> None:
        self.ownership = ownership
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        own = self.ownership
        if own.owned:
            # Release everything: the partition count may change with the next assignment.
            released, own.owned = own.owned, set()
            log.info("poll group: releasing %s", ", ".join(sorted(released)))
            await own._release(released)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        own = self.ownership
        self.consumer.pause(*assigned)
        count = len(self.consumer.partitions_for_topic(own.topic) or ())
        if not count:
            return
        accounts = own.accounts_of(assigned, count)
        log.info(
            "poll group: assigned cursor partitions %s: accounts %s",
            sorted(tp.partition for tp in assigned),
            ", ".join(sorted(accounts)) or "none (standing by)",
        )
        own.owned = accounts
        await own._acquire(accounts)
