"""The generic half of a sink: a consumer group over one topic, requests out, offsets in.

What a destination adds (how records are checked and packed into requests, how a request is
sent, where a refused record goes, how the rate is shared) is a :class:`Sink`; the engine
does the rest, the same for any destination, as quix-streams' sink manager and Redpanda
Connect's batch outputs do:

- Records are packed per partition by the sink; at most ``max_in_flight`` requests are out
  at once, each carried to its end by ``Sink.send`` (delivered or dead-lettered).
- Offsets are committed per partition only up to the contiguous prefix of records whose
  request finished or that were refused (:mod:`.offsets`); nothing else moves them.
- Few re-sends after a crash: commits run one at a time in the background, every
  ``commit_interval_s`` or at once when half the hold limit is finished and uncommitted;
  no request is launched while ``read_ahead`` requests' worth of finished records wait
  for a commit (behind one held back by retries, say). A crash then sends again at most
  ``max_in_flight + read_ahead`` requests' worth.
- While every slot is busy the loop tops up a queue of up to ``read_ahead`` packed requests
  from what is already fetched. aiokafka fetches a partition again only once what it fetched
  before is consumed, so this queue is what keeps requests going out while the next fetch
  is on its way (with one request per slot, delivery stalled for ~60 ms at every fetch
  in ``make bench``).
- If every slot stays busy (an outage, refused credentials), the partitions are paused
  and the consumer keeps polling, so that the group does not drop it for exceeding
  ``max.poll.interval.ms``.
- Rebalance (partitions revoked): stop sending, give in-flight requests up to
  ``revoke_timeout_s``, commit what is done, abandon the rest. Whoever gets the partitions
  reads the uncommitted records again and sends them again (the sink makes that harmless:
  mParticle drops the repeats by ``source_request_id``).
- ``stop()``: stop fetching, give in-flight requests up to ``shutdown_timeout_s``, commit,
  leave the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streamproc import kafka, metrics
from streamproc.config import KafkaSettings
from streamproc.health import Health
from streamproc.lifecycle import Service, cancel_and_wait
from streamproc.sinks.offsets import OffsetTracker, Positioned

log = logging.getLogger(__name__)

R = TypeVar("R")


class Sink(Protocol[R]):
    """What is particular to one destination; requests of type ``R``.

    Packing is synchronous (no await between a fetch and its packing, so a rebalance cannot
    clear the state half-way through); sending and refusing are the sink's to make durable.
    """

    @property
    def max_batches(self) -> int:
        """Records a request holds at most (the hold limit is counted in these)."""
        ...

    def __len__(self) -> int:
        """Records packed into requests that are not complete yet."""
        ...

    def pack(
        self, tp: TopicPartition, records: Sequence[Any], full: list[R]
    ) -> list[tuple[Any, str]]:
        """Pack ``records`` of ``tp`` in order, appending the requests they complete to
        ``full``; return the records refused before sending, each with its reason code."""
        ...

    def age(self) -> float:
        """Seconds since the oldest incomplete request got its first record (0: none)."""
        ...

    def flush_due(self, linger_s: float, limit: int) -> list[R]:
        """Up to ``limit`` incomplete requests filling for ``linger_s`` or longer."""
        ...

    def clear(self) -> None:
        """Forget every incomplete request (their records will be read again)."""
        ...

    def records(self, request: R) -> Iterable[Positioned]:
        """The records ``request`` carries (finished when :meth:`send` returns)."""
        ...

    async def send(self, request: R) -> None:
        """Return once every record of ``request`` is delivered or dead-lettered; raise only
        what cannot be retried (the engine then stops, for a restart to send it again)."""
        ...

    async def refuse(self, record: Any, reason_code: str) -> None:
        """Dead-letter ``record`` (refused by :meth:`pack`), retrying until Kafka has it."""
        ...

    def assigned(self, mine: int, total: int) -> None:
        """This member now holds ``mine`` of the topic's ``total`` partitions."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the engine paces fetches, requests and commits (durations are seconds)."""

    max_in_flight: int = 4
    read_ahead: int = 16  # packed requests waiting for a slot (at least one per slot)
    linger_s: float = 0.05
    commit_interval_s: float = 0.2
    shutdown_timeout_s: float = 20.0
    revoke_timeout_s: float = 10.0
    blocked_poll_s: float = 1.0
    idle_poll_s: float = 0.5
    max_poll_records: int = 250


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, engine: SinkEngine[Any]) -> None:
        self._engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._engine._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._engine._on_assigned(assigned)


class SinkEngine(Service, Generic[R]):
    """Consumes ``topic`` in group ``group_id`` into ``sink``; ``start``/``stop`` idempotent.

    ``task`` ends only if delivery fails for good (a bug or an error that cannot be
    retried); its exception says why, and nothing past the committed offsets is lost.
    """

    def __init__(
        self,
        kafka_settings: KafkaSettings,
        sink: Sink[R],
        *,
        topic: str,
        group_id: str,
        health: Health,
        component: str,
        pacing: Pacing,
        default_partitions: int = 1,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.group_id = group_id
        self.health = health
        self.component = component
        self.pacing = pacing
        self.max_in_flight = max(1, pacing.max_in_flight)
        self.read_ahead = max(pacing.read_ahead, self.max_in_flight)
        self.shutdown_timeout_s = pacing.shutdown_timeout_s
        self._kafka = kafka_settings
        self._default_partitions = default_partitions
        self._consumer_options = consumer_options or {}
        self._tracker = OffsetTracker()
        self._commit_task: asyncio.Task[None] | None = None
        self._ready: deque[R] = deque()  # packed requests waiting for a slot
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._generation = 0
        self._rebalancing = False
        self._paused = False
        self._committed_at = 0.0
        self._failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._main: asyncio.Task[None] | None = None
        self._refused = metrics.DL_BATCHES.labels("dead_lettered")

    @property
    def hold_limit(self) -> int:
        """Finished, uncommitted records past which no request is launched."""
        return self.read_ahead * self.sink.max_batches

    @property
    def task(self) -> asyncio.Task[None]:
        if self._main is None:
            raise RuntimeError("SinkEngine.task before start()")
        return self._main

    async def start(self) -> None:
        if self._main is not None:
            return
        self.health.set(self.component, False, "starting")
        self._stopping.clear()
        await self.sink.start()
        self._consumer = kafka.consumer(
            self._kafka, group_id=self.group_id, **self._consumer_options
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        self._main = asyncio.create_task(self._run(self._consumer), name=self.component)
        self.health.set(self.component, True)

    async def stop(self) -> None:
        """Stop fetching, finish or abandon in-flight requests within the bound, commit."""
        if self._main is None or self._consumer is None:
            return
        main, consumer = self._main, self._consumer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout_s
        self._stopping.set()
        self.health.set(self.component, False, "stopping")
        done, _ = await asyncio.wait({main}, timeout=self.shutdown_timeout_s)
        if not done:
            main.cancel()
            await asyncio.wait({main})
        self.sink.clear()
        self._ready.clear()
        left = max(0.0, deadline - loop.time())
        if self._tasks and left > 0:
            log.info("waiting up to %.1f s for %d requests in flight", left, len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=left)
        await self._abandon()
        await self._commit()
        self._main = self._consumer = None
        await consumer.stop()  # leaves the group
        await self.sink.stop()
        if not main.cancelled() and main.exception() is not None:
            log.error("%s stopped after a failure: %r", self.component, main.exception())

    # --- the loop -----------------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        sink, linger_s = self.sink, self.pacing.linger_s
        while not self._stopping.is_set():
            if self._failure is not None:
                raise self._failure
            self._launch()
            if len(self._ready) >= self.read_ahead:
                # The read-ahead queue is full: fetch nothing more until a slot frees.
                await self._wait_for_slot(consumer)
            elif self._ready:
                # Every slot is busy: top the queue up from what is already fetched, so a
                # freed slot is refilled at once, but do not wait for the broker.
                if not await self._fetch(consumer, 0.0):
                    await self._wait_for_slot(consumer)
                else:
                    # getmany returns without suspending when it has records: let the
                    # answers that came in meanwhile free their slots before the next top-up.
                    await asyncio.sleep(0)
            else:
                self._resume(consumer)
                timeout = linger_s - sink.age() if len(sink) else self.pacing.idle_poll_s
                await self._fetch(consumer, max(0.0, timeout))
            room = self.read_ahead - len(self._ready)
            if len(sink) and room > 0:
                self._ready.extend(sink.flush_due(linger_s, room))
            self._commit_soon()

    async def _fetch(self, consumer: AIOKafkaConsumer, timeout_s: float) -> int:
        """Take what the consumer has (waiting up to ``timeout_s``); return how many records."""
        generation, sink = self._generation, self.sink
        # No more than the read-ahead queue has room for (by count: a request that fills by
        # size first holds fewer, and one fetch may then complete a few more).
        free = self.read_ahead - len(self._ready)
        room = free * sink.max_batches - len(sink)
        data = await consumer.getmany(
            timeout_ms=int(timeout_s * 1000),
            max_records=max(1, min(room, self.pacing.max_poll_records)),
        )
        if not data:
            return 0
        if self._rebalancing or generation != self._generation:
            # Fetched across a rebalance: these may already belong to the new assignment,
            # whose position moved past them. Put the position back so they are read again.
            assigned = consumer.assignment()
            for tp, records in data.items():
                if tp in assigned and records:
                    consumer.seek(tp, records[0].offset)
            return 0
        refused: list[tuple[Any, str]] = []
        full: list[R] = []
        # No await in this loop: a rebalance cannot clear the state half-way through.
        for tp, records in data.items():
            self._tracker.fetched_all(tp, records)
            refused += sink.pack(tp, records, full)
        self._ready.extend(full)
        for record, reason_code in refused:
            await sink.refuse(record, reason_code)
            self._refused.inc()
            if generation == self._generation:
                tp = TopicPartition(record.topic, record.partition)
                self._tracker.finished(tp, record.offset)
        return sum(len(records) for records in data.values())

    async def _wait_for_slot(self, consumer: AIOKafkaConsumer) -> None:
        self._slot_freed.clear()
        try:
            # asyncio.timeout, not wait_for: this runs once per request, and wait_for wraps
            # the wait in a task of its own.
            async with asyncio.timeout(self.pacing.blocked_poll_s):
                await self._slot_freed.wait()
        except TimeoutError:
            # Blocked for a while: pause and poll, so the group keeps this member. Paused
            # partitions drop what was prefetched; it is fetched again on resume.
            if not self._paused and not self._rebalancing:
                consumer.pause(*consumer.assignment())
                self._paused = True
                log.info("all %d requests in flight are waiting: fetching paused", len(self._tasks))
            await self._fetch(consumer, 0.0)

    def _resume(self, consumer: AIOKafkaConsumer) -> None:
        if self._paused:
            self._paused = False
            consumer.resume(*consumer.assignment())

    def _launch(self) -> None:
        """Fill the free slots from the read-ahead queue, unless too much awaits a commit.

        Each request in flight finishes into the held records, so held records plus what
        is in flight stay under ``hold_limit + max_in_flight`` requests' worth.
        """
        ready, tasks = self._ready, self._tasks
        if ready and len(tasks) < self.max_in_flight and not self._rebalancing:
            if self._tracker.held() >= self.hold_limit:
                self._commit_soon()
            else:
                while ready and len(tasks) < self.max_in_flight:
                    task = asyncio.create_task(self._send(ready.popleft(), self._generation))
                    tasks.add(task)
                    task.add_done_callback(self._request_done)
        metrics.DL_IN_FLIGHT.set(len(tasks))

    async def _send(self, request: R, generation: int) -> None:
        await self.sink.send(request)
        if generation == self._generation:
            self._tracker.finished_all(self.sink.records(request))

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # Its records would never finish and the commits would stall for good: stop
            # instead, so that a restart sends them again.
            self._failure = task.exception()
            log.error("a request failed: %r", self._failure)
        if self._failure is None and not self._stopping.is_set():
            self._commit_soon()
            # Refill the slot now rather than when the loop next wakes: it may be busy
            # decoding a fetch, and the destination would wait for the next request meanwhile.
            self._launch()
        else:
            metrics.DL_IN_FLIGHT.set(len(self._tasks))

    async def _abandon(self) -> None:
        tasks = set(self._tasks)
        if tasks:
            log.info("abandoned %d requests in flight; their records are not committed", len(tasks))
        await cancel_and_wait(tasks)

    # --- commits ------------------------------------------------------------------------

    def _commit_soon(self) -> None:
        """Start a commit in the background if one is due and none is under way.

        Due every ``commit_interval_s``, or at once once half the hold limit is finished
        and uncommitted. One at a time, so that commits land in order.
        """
        if (
            self._commit_task is not None
            or self._consumer is None
            or self._rebalancing
            or self._stopping.is_set()
        ):
            return
        now = time.monotonic()
        if (
            now - self._committed_at < self.pacing.commit_interval_s
            and self._tracker.held() < self.hold_limit // 2
        ):
            return
        offsets = self._tracker.committable()
        if not offsets:
            return
        self._committed_at = now
        self._commit_task = asyncio.create_task(self._commit_offsets(offsets), name="commit")
        self._commit_task.add_done_callback(self._commit_done)

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self._commit_task = None
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            log.error("an offset commit failed: %r", self._failure)
        if self._failure is None and not self._stopping.is_set():
            # The commit may have opened the hold limit, and more may be due already.
            self._slot_freed.set()
            self._commit_soon()
            self._launch()

    async def _commit(self) -> None:
        """Commit what is finished now, after the commit under way (they land in order)."""
        while self._commit_task is not None:
            await asyncio.wait({self._commit_task})
        self._committed_at = time.monotonic()
        offsets = self._tracker.committable()
        if offsets and self._consumer is not None:
            await self._commit_offsets(offsets)

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        consumer, generation = self._consumer, self._generation
        assert consumer is not None  # noqa: S101 -- only called between start and stop
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed (%s); the next one carries these", exc)
            return
        if generation == self._generation:
            self._tracker.committed(offsets)

    # --- rebalance ----------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._rebalancing = True
        self.sink.clear()
        self._ready.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.pacing.revoke_timeout_s)
        await self._commit()
        await self._abandon()
        self._generation += 1
        self._tracker.clear()
        self._share(set())
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # aiokafka starts every assigned partition from its committed offset.
        self._generation += 1
        self._tracker.clear()
        self.sink.clear()
        self._ready.clear()
        self._paused = False
        self._rebalancing = False
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        self._share(assigned)

    def _share(self, assigned: set[TopicPartition]) -> None:
        mine = sum(1 for tp in assigned if tp.topic == self.topic)
        known = self._consumer.partitions_for_topic(self.topic) if self._consumer else None
        self.sink.assigned(mine, max(len(known or ()), mine) or self._default_partitions)
