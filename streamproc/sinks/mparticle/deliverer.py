"""The delivery loop: a consumer group over the batches topic, bulk requests to mParticle.

Records are packed into requests of one partition each (:mod:`.batcher`), at most
``max_in_flight`` requests are out at once, each carried to its end by :class:`.Sender`.
Offsets are committed per partition only up to the contiguous prefix of records that
mParticle accepted or that were dead-lettered (:mod:`.offsets`); nothing else moves them.

- The rate limit is the feed's (mParticle's limits are per API key): on every rebalance
  the deliverer takes the share of it that its partitions are of the topic's, so the
  group stays within it however many members it has. A request is at most one second of
  that share (and 100 batches).
- Few re-sends after a crash: commits run one at a time in the background, every
  ``commit_interval_s`` or at once when half the hold limit is finished and uncommitted;
  no request is launched while ``read_ahead`` requests' worth of finished batches wait
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
  reads the uncommitted records again and sends the same bytes: mParticle drops the
  repeats by ``source_request_id``.
- ``stop()``: stop fetching, give in-flight requests up to ``shutdown_timeout_s``, commit,
  leave the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streamproc import kafka, metrics
from streamproc.backoff import Backoff
from streamproc.config import Settings
from streamproc.dlq import DeadLetter
from streamproc.formats import envelope
from streamproc.formats.mparticle import ACCEPTED_BATCH_BYTES, MAX_BULK_BATCHES
from streamproc.health import Health
from streamproc.lag import Watch
from streamproc.lifecycle import Service, cancel_and_wait, until
from streamproc.redact import mask_url
from streamproc.sinks.mparticle.batcher import (
    Batch,
    PartitionBatchers,
    reject_reason,
)
from streamproc.sinks.mparticle.client import MParticleClient
from streamproc.sinks.mparticle.offsets import OffsetTracker
from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter
from streamproc.sinks.mparticle.sender import ItemTimes, Sender, item_times
from streamproc.topics import Topics

log = logging.getLogger(__name__)

COMPONENT = "deliver"


def tp_of(batch: Batch) -> TopicPartition:
    return TopicPartition(batch.topic, batch.partition)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, deliverer: Deliverer) -> None:
        self._deliverer = deliverer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._deliverer._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._deliverer._on_assigned(assigned)


class Deliverer(Service):
    """``streamproc deliver``'s engine; ``start``/``stop`` are idempotent.

    ``task`` ends only if delivery fails for good (a bug or an error that cannot be
    retried); its exception says why, and nothing past the committed offsets is lost.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        group_id: str | None = None,
        backoff_base_s: float | None = None,
        auth_retry_s: float | None = None,
        max_retries: int | None = None,
        commit_interval_s: float = 0.2,
        shutdown_timeout_s: float | None = None,
        revoke_timeout_s: float = 10.0,
        blocked_poll_s: float = 1.0,
        idle_poll_s: float = 0.5,
        max_poll_records: int = 250,
        read_ahead: int = 16,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        mp = settings.mparticle
        self.settings = settings
        self.topics = Topics.for_prefix(settings.topic_prefix)
        self.group_id = group_id or f"{settings.topic_prefix}streamproc-deliver"
        self.health = health or Health()
        self.max_in_flight = max(1, mp.max_in_flight)
        # Requests packed and waiting for a slot (at least one per slot): at most 100
        # batches and 256 KB each.
        self.read_ahead = max(read_ahead, self.max_in_flight)
        self.linger_s = mp.linger_ms / 1000
        self.commit_interval_s = commit_interval_s
        self.shutdown_timeout_s = (
            mp.shutdown_timeout_s if shutdown_timeout_s is None else shutdown_timeout_s
        )
        self.revoke_timeout_s = revoke_timeout_s
        self.blocked_poll_s = blocked_poll_s
        self.idle_poll_s = idle_poll_s
        self.max_poll_records = max_poll_records
        self.backoff_max_s = mp.backoff_max_s
        self._consumer_options = consumer_options or {}
        self.client = MParticleClient(
            mp.url(),
            mp.api_key,
            mp.api_secret.reveal() if mp.api_secret else "",
            timeout_s=mp.request_timeout_s,
            max_connections=self.max_in_flight,
        )
        # No share of the feed's rate until partitions are assigned.
        self.limiter = AdaptiveRateLimiter(mp.rate_limit_batches_per_s, share=0.0)
        self.sender = Sender(
            self.client,
            self.limiter,
            health=self.health,
            backoff_base_s=mp.backoff_base_s if backoff_base_s is None else backoff_base_s,
            backoff_max_s=mp.backoff_max_s,
            retry_after_max_s=mp.retry_after_max_s,
            auth_retry_s=mp.auth_retry_s if auth_retry_s is None else auth_retry_s,
            # mparticle.max_retries 0 means no limit.
            max_retries=max_retries if max_retries is not None else (mp.max_retries or None),
        )
        self._batchers = PartitionBatchers()
        self._tracker = OffsetTracker()
        self._commit_task: asyncio.Task[None] | None = None
        # Packed requests with their item times, waiting for a slot.
        self._ready: deque[tuple[list[Batch], ItemTimes]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._generation = 0
        self._rebalancing = False
        self._paused = False
        self._committed_at = 0.0
        self._failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._main: asyncio.Task[None] | None = None

    @property
    def hold_limit(self) -> int:
        """Finished, uncommitted batches past which no request is launched."""
        return self.read_ahead * self._batchers.max_batches

    @property
    def task(self) -> asyncio.Task[None]:
        if self._main is None:
            raise RuntimeError("Deliverer.task before start()")
        return self._main

    name = "deliver"

    def watches(self) -> list[Watch]:
        return [Watch(self.group_id, [self.topics.batches])]

    async def run(self, stop: asyncio.Event) -> None:
        """The role: start, deliver until ``stop`` is set, stop within the bound; raise what
        ended delivery for good."""
        async with self:
            for task in await until(stop, self.task):
                task.result()

    async def start(self) -> None:
        if self._main is not None:
            return
        self.health.set(COMPONENT, False, "starting")
        self._stopping.clear()
        await self.client.start()
        self._producer = kafka.letter_producer(self.settings.kafka)  # dead letters only
        await self._producer.start()
        self._consumer = kafka.consumer(
            self.settings.kafka, group_id=self.group_id, **self._consumer_options
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topics.batches], listener=_Listener(self))
        self._main = asyncio.create_task(self._run(self._consumer), name="deliver")
        self.health.set(COMPONENT, True)
        log.info(
            "delivering %s to %s (group %s)",
            self.topics.batches,
            mask_url(self.client.url),
            self.group_id,
        )

    async def stop(self) -> None:
        """Stop fetching, finish or abandon in-flight requests within the bound, commit."""
        if self._main is None or self._consumer is None:
            return
        main, consumer = self._main, self._consumer
        deadline = asyncio.get_running_loop().time() + self.shutdown_timeout_s
        self._stopping.set()
        self.health.set(COMPONENT, False, "stopping")
        done, _ = await asyncio.wait({main}, timeout=self.shutdown_timeout_s)
        if not done:
            main.cancel()
            await asyncio.wait({main})
        self._batchers.clear()
        self._ready.clear()
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        if self._tasks and left > 0:
            log.info("waiting up to %.1f s for %d requests in flight", left, len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=left)
        await self._abandon()
        await self._commit()
        self._main = self._consumer = None
        await consumer.stop()  # leaves the group
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self.client.stop()
        if not main.cancelled() and main.exception() is not None:
            log.error("delivery stopped after a failure: %r", main.exception())

    # --- the loop -----------------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
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
                batchers = self._batchers
                timeout = self.linger_s - batchers.age() if batchers else self.idle_poll_s
                await self._fetch(consumer, max(0.0, timeout))
            room = self.read_ahead - len(self._ready)
            if self._batchers and room > 0:
                due = self._batchers.flush_due(self.linger_s, room)
                self._ready.extend([(request, item_times(request)) for request in due])
            self._commit_soon()

    async def _fetch(self, consumer: AIOKafkaConsumer, timeout_s: float) -> int:
        """Take what the consumer has (waiting up to ``timeout_s``); return how many records."""
        generation = self._generation
        # No more than the read-ahead queue has room for (by count: a request of batches
        # over ~2.6 KB fills by size first, and one fetch may then complete a few more).
        free = self.read_ahead - len(self._ready)
        room = free * self._batchers.max_batches - len(self._batchers)
        data = await consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=max(1, min(room, self.max_poll_records))
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
        rejected: list[tuple[Batch, str]] = []
        full: list[list[Batch]] = []
        limit = ACCEPTED_BATCH_BYTES
        # No await in this loop: a rebalance cannot clear the state half-way through.
        for tp, records in data.items():
            self._tracker.fetched_all(tp, records)
            # The common case inline ('{' ... '}', within the limit): once per batch.
            postable = [
                record
                for record in records
                if (value := record.value)
                and len(value) <= limit
                and value[0] == 123
                and value[-1] == 125
            ]
            if len(postable) != len(records):
                accepted = {id(record) for record in postable}
                rejected += [
                    (record, reject_reason(record.value) or "not_json_object")
                    for record in records
                    if id(record) not in accepted
                ]
            self._batchers.add_all(tp, postable, full)
        self._ready.extend([(request, item_times(request)) for request in full])
        for batch, reason in rejected:
            size = len(batch.value or b"")
            await self._dead_letter(batch, reason, f"{size} bytes; not sent")
            metrics.DL_BATCHES.labels("dead_lettered").inc()
            if generation == self._generation:
                self._tracker.finished(tp_of(batch), batch.offset)
        return sum(len(records) for records in data.values())

    async def _wait_for_slot(self, consumer: AIOKafkaConsumer) -> None:
        self._slot_freed.clear()
        try:
            # asyncio.timeout, not wait_for: this runs once per request, and wait_for wraps
            # the wait in a task of its own.
            async with asyncio.timeout(self.blocked_poll_s):
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

        Each request in flight finishes into the held batches, so held batches plus what
        is in flight stay under ``hold_limit + max_in_flight`` requests' worth.
        """
        ready, tasks = self._ready, self._tasks
        if ready and len(tasks) < self.max_in_flight and not self._rebalancing:
            if self._tracker.held() >= self.hold_limit:
                self._commit_soon()
            else:
                while ready and len(tasks) < self.max_in_flight:
                    request, times = ready.popleft()
                    task = asyncio.create_task(self._deliver(request, times, self._generation))
                    tasks.add(task)
                    task.add_done_callback(self._request_done)
        metrics.DL_IN_FLIGHT.set(len(tasks))

    async def _deliver(self, request: list[Batch], times: ItemTimes, generation: int) -> None:
        await self.sender.send(request, self._dead_letter, times)
        if generation == self._generation:
            self._tracker.finished_all(request)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # Its batches would never finish and the commits would stall for good: stop
            # instead, so that a restart sends them again.
            self._failure = task.exception()
            log.error("a delivery request failed: %r", self._failure)
        if self._failure is None and not self._stopping.is_set():
            self._commit_soon()
            # Refill the slot now rather than when the loop next wakes: it may be busy
            # decoding a fetch, and mParticle would wait for the next request meanwhile.
            self._launch()
        else:
            metrics.DL_IN_FLIGHT.set(len(self._tasks))

    async def _abandon(self) -> None:
        tasks = set(self._tasks)
        if tasks:
            log.info("abandoned %d requests in flight; their batches are not committed", len(tasks))
        await cancel_and_wait(tasks)

    async def _dead_letter(self, batch: Batch, reason_code: str, reason: str) -> None:
        """Write ``batch`` to the dead-letter topic, retrying until Kafka has it."""
        assert self._producer is not None  # noqa: S101 -- only called between start and stop
        letter = DeadLetter(
            stage="deliver",
            source=envelope.header(batch.headers, envelope.H_SOURCE) or "unknown",
            reason_code=reason_code,
            reason=reason,
            origin_topic=self.topics.batches,
            key=batch.key,
            value=batch.value or b"",
            headers=batch.headers,
        )
        backoff = Backoff(0.2, self.backoff_max_s)
        while True:
            try:
                await self._producer.send_and_wait(
                    self.topics.dlq, letter.value, key=letter.key, headers=letter.headers
                )
            except KafkaError as exc:
                log.warning("dead-letter write failed (%s); retrying", exc)
                await asyncio.sleep(backoff.next())
            else:
                letter.count()
                return

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
            now - self._committed_at < self.commit_interval_s
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
        self._batchers.clear()
        self._ready.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.revoke_timeout_s)
        await self._commit()
        await self._abandon()
        self._generation += 1
        self._tracker.clear()
        self._take_share(set())
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # aiokafka starts every assigned partition from its committed offset.
        self._generation += 1
        self._tracker.clear()
        self._batchers.clear()
        self._ready.clear()
        self._paused = False
        self._rebalancing = False
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        self._take_share(assigned)

    def _take_share(self, assigned: set[TopicPartition]) -> None:
        """Take the feed's rate in proportion to the partitions held, and size requests.

        With every member doing so, the group's shares add up to the feed's rate at most
        (a member beyond the partition count gets none).
        """
        topic = self.topics.batches
        mine = sum(1 for tp in assigned if tp.topic == topic)
        known = self._consumer.partitions_for_topic(topic) if self._consumer else None
        total = max(len(known or ()), mine) or self.settings.topics.partitions
        self.limiter.set_share(mine / total)
        # A request of at most one second of the share: mParticle counts batches per
        # second, and a larger request would land as a burst over it.
        burst = int(self.limiter.max_rate * self.limiter.burst_s)
        self._batchers.max_batches = max(1, min(MAX_BULK_BATCHES, burst))
        if assigned:
            log.info(
                "rate limit: %d of %d partitions, %.1f of the feed's %.0f batches/s; "
                "requests of at most %d batches",
                mine,
                total,
                self.limiter.max_rate,
                self.limiter.feed_rate,
                self._batchers.max_batches,
            )
