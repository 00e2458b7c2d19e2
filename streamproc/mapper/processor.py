"""The map stage's exactly-once loop: consume both sources, map, dedupe, produce, commit.

A consumer group (``<prefix>streamproc-map``) reads ``ticketmatic.eventstream`` and
``ticketure.audit`` (``read_committed``, no auto-commit). Every input partition this
process owns gets its own transactional producer, ``transactional_id =
<prefix>streamproc-map-<topic>-<partition>``, and its own :class:`~streamproc.mapper.dedupe.
DedupeState`. What was polled for a partition is processed in one transaction on that
partition's producer: the batches (``mparticle.batches``), the dead letters, the dedupe
changelog records and the consumed offsets (``send_offsets_to_transaction``) commit or
abort together.

Zombie fencing: aiokafka's ``send_offsets_to_transaction`` carries no consumer generation,
so the group coordinator would take offsets from a consumer that already lost the
partition. A partition's transactional id is the same for whoever owns it, and the owner
initialises its producer (``InitProducerId``) on assignment BEFORE it reads the committed
offset and restores the dedupe state: that bumps the producer epoch, so the broker aborts
the previous owner's open transaction and refuses its commit (``ProducerFenced``) from then
on (as Kafka Streams' EOS v1 and Faust do). Each commit therefore builds on the result of
the previous one, whoever made it.

What one transaction writes is :mod:`.transaction`'s business; no record can fail one
(whatever a record raises, it is dead-lettered in it and the next record follows).

Failure: a transaction that fails is aborted, the partition is paused, its producer closed
and the partition set up again as on assignment (new producer, state restored from the
changelog, position = committed offset): nothing lost, nothing twice. After
``ProducerFenced`` the set-up waits ``fence_backoff_s`` (the partition has moved; the
rebalance will say so) and only happens if the consumer still owns the partition. Repeated
failures back off exponentially; a partition whose transactions keep failing for longer
than ``retry_timeout_s`` stops the processor with the error (the process exits non-zero
and is restarted: a fresh client is the remedy left).

Set-up is per partition and off the poll loop: each changelog partition's set-up (fence,
restore, committed offset) runs as its own task with its own reader, bounded by
``restore_timeout_s``, so one that cannot finish (a changelog partition whose last stable
offset an open transaction pins: restore waits for it, or the state would miss ids) holds
no other partition. It is retried on its own with backoff for as long as it lasts, never
fatal (a restart would meet the same transaction): ``streamproc_map_partition_waiting_
seconds`` shows how long each partition has waited, the MapPartitionNotSetUp alert fires
and ``/readyz`` names it with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from streamproc import kafka, metrics, topics
from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.formats.envelope import Source
from streamproc.health import Health
from streamproc.lag import Watch
from streamproc.lifecycle import Service, cancel_and_wait
from streamproc.mapper.dedupe import DedupeState, restore
from streamproc.mapper.setups import SetUpSchedule, name
from streamproc.mapper.transaction import Hook, Mapper, Part, Transactor
from streamproc.mapping.router import MappingContext, map_record
from streamproc.topics import Topics

log = logging.getLogger(__name__)

COMPONENT = "map"


class MapProcessor(Service):
    """``streamproc map``'s role: ``await run(stop)`` (or ``async with`` it and ``work(stop)``).

    Durations are parameters so tests run without sleeping. ``before_commit`` is awaited
    just before each commit (tests hold a transaction open with it).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        mapper: Mapper | None = None,
        poll_timeout_ms: int = 200,
        max_records: int = 2000,
        txn_max_records: int = 2000,
        revoke_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 20.0,
        restore_timeout_s: float = 120.0,
        fence_backoff_s: float = 1.0,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 10.0,
        retry_timeout_s: float = 300.0,
        consumer_options: Mapping[str, Any] | None = None,
        before_commit: Hook | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics.for_prefix(settings.topic_prefix)
        self.group_id = f"{settings.topic_prefix}streamproc-map"
        self.health = health or Health()
        if mapper is None:
            mapper = functools.partial(map_record, ctx=MappingContext.from_settings(settings))
        self._window_ms = int(settings.mapping.dedupe_window_s * 1000)
        self._poll_timeout_ms = poll_timeout_ms
        self._max_records = max_records
        self._txn_max = txn_max_records
        self._revoke_timeout_s = revoke_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._restore_timeout_s = restore_timeout_s
        self._fence_backoff_s = fence_backoff_s
        self._txn_timeout_s = settings.kafka.transaction_timeout_ms / 1000
        self._consumer_options = dict(consumer_options or {})
        # Input topic -> the source its items come from (the dedupe size is per source).
        self._sources = {
            self.topics.ticketmatic: Source.TICKETMATIC,
            self.topics.ticketure: Source.TICKETURE,
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: dict[TopicPartition, Part] = {}
        self._schedule = SetUpSchedule(
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            retry_timeout_s=retry_timeout_s,
        )
        self._setting_up: dict[int, asyncio.Task[None]] = {}  # changelog partition: set-up
        self._generation = 0
        self._fatal: BaseException | None = None
        self.fenced = 0  # commits refused because another producer took the partition over
        self.committed = 0  # source records whose transaction committed
        self._transactor = Transactor(
            self.topics, self.group_id, mapper, kafka.KeyPartitions(), before_commit
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        self.health.set(COMPONENT, False, "starting")
        await self._check_copartitioned()
        consumer = kafka.consumer(
            self.settings.kafka, group_id=self.group_id, **self._consumer_options
        )
        try:
            await consumer.start()
            consumer.subscribe(
                [self.topics.ticketmatic, self.topics.ticketure], listener=_Listener(self)
            )
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self.health.set(COMPONENT, False, "joining the consumer group")
        self.health.watch(f"{COMPONENT} partitions", self._schedule.reason)

    async def stop(self) -> None:
        """Finish (or after ``shutdown_timeout_s`` abort) open transactions, leave the group."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        parts = list(self._parts.values())
        self._parts.clear()
        self._schedule.cancel()
        await self._stop_set_ups()
        await self._release(parts, self._shutdown_timeout_s, cancel=True)
        await consumer.stop()  # leaves the group: the partitions move at once
        self._schedule.forget()
        self.health.forget(f"{COMPONENT} partitions")
        for source in self._sources.values():
            metrics.DEDUPE_SIZE.labels(source).set(0)
        self.health.set(COMPONENT, False, "stopped")

    name = "map"

    def watches(self) -> list[Watch]:
        """The group's lag on both sources; stuck transactions on the dedupe changelog."""
        sources = [self.topics.ticketmatic, self.topics.ticketure]
        return [Watch(self.group_id, sources, changelogs=[self.topics.dedupe])]

    async def run(self, stop: asyncio.Event) -> None:
        """The role: start, :meth:`work` until ``stop`` is set, stop within the bound."""
        async with self:
            await self.work(stop)

    async def work(self, stop: asyncio.Event) -> None:
        """Poll and dispatch until ``stop`` is set; raise what made a partition give up."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("MapProcessor.work() before start()")
        while not stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            self._start_set_ups()
            batch = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_records
            )
            for tp, records in batch.items():
                part = self._parts.get(tp)
                if part is None or not part.active:
                    continue  # re-read from the committed offset once it is set up again
                part.queue.extend(records)
                if len(part.queue) >= 2 * self._txn_max and not part.paused:
                    consumer.pause(tp)
                    part.paused = True
                if part.task is None:
                    part.task = asyncio.create_task(self._work(part))

    # --- assignment -----------------------------------------------------------------------

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self._generation += 1
        self._schedule.cancel()
        await self._stop_set_ups()
        parts = [p for tp in revoked if (p := self._parts.pop(tp, None)) is not None]
        await self._release(parts, self._revoke_timeout_s)
        self._schedule.forget(revoked)
        self._update_size()

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        # Nothing is read until the partition's producer has fenced the previous owner and
        # its state is restored (in run()): pause now, seek and resume after the set-up.
        self._generation += 1
        consumer = self._consumer
        if consumer is not None and assigned:
            consumer.pause(*assigned)
        self._schedule.assigned(assigned, "restoring dedupe state")
        if assigned:
            self.health.set(COMPONENT, True, "")
        else:
            self.health.set(COMPONENT, True, "no partition assigned: standing by")

    # --- set-up, one changelog partition at a time --------------------------------------

    def _start_set_ups(self) -> None:
        """Start the set-up of every partition due, one task per changelog partition (the
        input partitions of both sources with one number share one changelog partition)."""
        for number, tps in self._schedule.take_due(set(self._setting_up)).items():
            task = asyncio.create_task(self._set_up(number, tps), name=f"map-set-up-{number}")
            self._setting_up[number] = task

    async def _stop_set_ups(self) -> None:
        tasks = list(self._setting_up.values())
        self._setting_up.clear()
        await cancel_and_wait(tasks)

    async def _set_up(self, number: int, tps: Sequence[TopicPartition]) -> None:
        """Own ``tps`` (input partitions ``number``): fence the previous owners, restore
        state, seek to committed offsets; on failure retry each later on its own."""
        consumer = self._consumer
        generation = self._generation
        parts: dict[TopicPartition, Part] = {}
        started = time.monotonic()
        try:
            if consumer is None:
                return
            owned = consumer.assignment()
            parts = {
                tp: Part(tp, self._sources[tp.topic], self._producer(tp))
                for tp in sorted(set(tps) & owned)
            }
            try:
                # The restore's own timeout comes first, with its reason; this one is the
                # backstop for a fence (or reader start) that hangs.
                deadline = started + self._restore_timeout_s
                async with asyncio.timeout(self._restore_timeout_s + _BACKSTOP_S):
                    states, committed = await self._fence_and_restore(
                        consumer, number, parts, deadline
                    )
            except TimeoutError:
                failure: BaseException = TimeoutError(
                    f"set-up not done in {self._restore_timeout_s:g} s"
                )
            except (KafkaError, OSError) as exc:
                failure = exc
            else:
                if generation == self._generation and set(parts) <= consumer.assignment():
                    self._own(consumer, parts, states, committed, started)
                    parts = {}  # running now: no longer this task's to close
                return  # else a rebalance happened meanwhile; its own set-up is pending
            if generation == self._generation:
                for tp in parts:
                    self._schedule.retry_later(tp, failure, fatal=False)
        finally:
            self._setting_up.pop(number, None)
            await _close_quietly(p.producer for p in parts.values())

    def _own(
        self,
        consumer: AIOKafkaConsumer,
        parts: dict[TopicPartition, Part],
        states: dict[tuple[str, int], DedupeState],
        committed: dict[TopicPartition, int],
        started: float,
    ) -> None:
        metrics.DEDUPE_RESTORE.observe(time.monotonic() - started)
        for tp, part in parts.items():
            part.state = states[(part.source, tp.partition)]
            consumer.seek(tp, committed[tp])
            self._parts[tp] = part
            self._schedule.owned(tp)
        if parts:
            consumer.resume(*parts)
            log.info(
                "map: own %s (dedupe state: %d ids, restored in %.2f s)",
                ", ".join(name(tp) for tp in parts),
                sum(p.state.size for p in parts.values() if p.state is not None),
                time.monotonic() - started,
            )
        self._update_size()

    async def _fence_and_restore(
        self,
        consumer: AIOKafkaConsumer,
        number: int,
        parts: dict[TopicPartition, Part],
        deadline: float,
    ) -> tuple[dict[tuple[str, int], DedupeState], dict[TopicPartition, int]]:
        """Start the producers, then read the dedupe states and the offsets to resume from.

        Initialising a producer fences every earlier owner of its partition (their open
        transaction is aborted, their commits refused): only after that are the changelog
        and the committed offsets final.
        """
        starts = [p.producer.start() for p in parts.values()]
        for result in await asyncio.gather(*starts, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        reader = kafka.consumer(self.settings.kafka, group_id=None, fetch_max_wait_ms=100)
        await reader.start()
        try:
            wanted = {number: {part.source for part in parts.values()}}
            states = await restore(
                reader,
                self.topics.dedupe,
                wanted,
                self._new_state,
                max(0.0, deadline - time.monotonic()),
            )
        finally:
            await reader.stop()
        committed = {tp: await consumer.committed(tp) for tp in parts}
        missing = [tp for tp, offset in committed.items() if offset is None]
        if missing:
            committed.update(await consumer.beginning_offsets(missing))
        return states, {tp: offset for tp, offset in committed.items() if offset is not None}

    def _new_state(self) -> DedupeState:
        return DedupeState(self._window_ms)

    def _producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        txn_id = f"{self.settings.topic_prefix}streamproc-map-{tp.topic}-{tp.partition}"
        # Its transactions also write the dead letters of source records.
        return kafka.letter_producer(
            self.settings.kafka, transactional_id=txn_id, max_batch_size=256 * 1024
        )

    async def _release(self, parts: list[Part], timeout_s: float, cancel: bool = False) -> None:
        """Let ``parts`` finish their transaction in flight (up to ``timeout_s``), close them.

        A transaction still running after that keeps its producer until it ends (or is
        cancelled, if ``cancel``); the next owner's producer fences it, so it cannot commit.
        """
        for part in parts:
            part.active = False
            part.queue.clear()
        running = [p.task for p in parts if p.task is not None]
        if running:
            _done, late = await asyncio.wait(running, timeout=timeout_s)
            if late:
                log.warning(
                    "map: %d transaction(s) still open after %.1f s; they will be fenced",
                    len(late),
                    timeout_s,
                )
                if cancel:
                    await cancel_and_wait(late)
        await asyncio.gather(*(p.producer.stop() for p in parts if p.task is None))

    async def _check_copartitioned(self) -> None:
        """ConfigError unless the inputs and the changelog exist, co-partitioned."""
        rows = {row["role"]: row for row in await topics.describe(self.settings)}
        roles = ("ticketmatic", "ticketure", "dedupe")
        missing = [role for role in roles if not rows[role]["exists"]]
        if missing:
            raise ConfigError(
                "topics", f"{', '.join(missing)} missing: run `streamproc topics ensure`"
            )
        inputs = max(int(rows["ticketmatic"]["partitions"]), int(rows["ticketure"]["partitions"]))
        changelog = int(rows["dedupe"]["partitions"])
        if changelog < inputs:
            raise ConfigError(
                "topics",
                f"{self.topics.dedupe} has {changelog} partitions, fewer than the inputs "
                f"({inputs}): run `streamproc topics ensure`",
            )

    # --- processing -----------------------------------------------------------------------

    async def _work(self, part: Part) -> None:
        """Run transactions for ``part`` while it has records and is active."""
        try:
            while part.active and part.queue:
                records = part.queue[: self._txn_max]
                del part.queue[: self._txn_max]
                try:
                    # The broker aborts a transaction older than this anyway.
                    async with asyncio.timeout(self._txn_timeout_s):
                        if await self._transactor.run(part, records):
                            self.committed += len(records)
                            self._update_size()
                except (KafkaError, OSError, TimeoutError) as exc:
                    await self._failed(part, exc)
                    return
                self._schedule.succeeded(part.tp)
                if part.paused and part.active and len(part.queue) < self._txn_max:
                    part.paused = False
                    if self._consumer is not None:
                        self._consumer.resume(part.tp)
        except Exception as exc:
            log.exception("map: unexpected error on %s", name(part.tp))
            self._fatal = exc
        finally:
            part.task = None
            if not part.active:
                await part.producer.stop()

    # --- failures -------------------------------------------------------------------------

    async def _failed(self, part: Part, exc: BaseException) -> None:
        """Abort, close and set ``part`` up again (if still owned): see the module doc."""
        tp, fenced = part.tp, isinstance(exc, ProducerFenced | InvalidProducerEpoch)
        current = self._parts.get(tp) is part
        part.active = False
        part.queue.clear()
        if fenced:
            self.fenced += 1
            log.warning("map: %s: fenced, another consumer owns it now", name(tp))
        else:
            log.warning("map: %s: transaction failed (%r); aborting", name(tp), exc)
            try:
                await asyncio.wait_for(kafka.abort(part.producer), timeout=5.0)
            except (KafkaError, TimeoutError) as abort_exc:
                log.info(
                    "map: %s: abort failed (%r), the next producer aborts it", name(tp), abort_exc
                )
        await part.producer.stop()
        if not current:
            return  # revoked meanwhile: nothing more to do here
        del self._parts[tp]
        self._update_size()
        consumer = self._consumer
        if consumer is None or tp not in consumer.assignment():
            return
        consumer.pause(tp)
        delay = self._fence_backoff_s if fenced else None
        if not self._schedule.retry_later(tp, exc, delay, fatal=True):
            self._fatal = exc

    def _update_size(self) -> None:
        # One state per input partition: the input topic says whose ids it holds.
        sizes = dict.fromkeys(self._sources.values(), 0)
        for tp, part in self._parts.items():
            if part.state is not None:
                sizes[self._sources[tp.topic]] += part.state.size
        for source, size in sizes.items():
            metrics.DEDUPE_SIZE.labels(source).set(size)


_BACKSTOP_S = 1.0  # past restore_timeout_s, before a hanging set-up step is cancelled


async def _close_quietly(producers: Iterable[AIOKafkaProducer], timeout_s: float = 5.0) -> None:
    """Stop ``producers`` that never ran a transaction, each within ``timeout_s``."""
    stops = [asyncio.wait_for(producer.stop(), timeout_s) for producer in producers]
    for result in await asyncio.gather(*stops, return_exceptions=True):
        if isinstance(result, Exception):
            log.info("map: closing a producer failed: %r", result)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: MapProcessor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._processor._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._processor._assigned(set(assigned))
