"""The map stage's exactly-once loop: consume both sources, map, dedupe, produce, commit.

A consumer group (``<prefix>streamproc-map``) reads ``ticketmatic.eventstream`` and
``ticketure.audit`` (``read_committed``, no auto-commit). Every input partition this
process owns gets its own transactional producer, ``transactional_id =
<prefix>streamproc-map-<topic>-<partition>``, and its own :class:`~streamproc.dedupe.
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
failures back off exponentially; a partition failing for longer than ``retry_timeout_s``
stops the processor with the error (the process exits non-zero and is restarted).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from streamproc import kafka, metrics, topics
from streamproc.backoff import Backoff
from streamproc.config import Settings
from streamproc.dedupe import DedupeState, restore
from streamproc.errors import ConfigError
from streamproc.health import Health
from streamproc.lifecycle import Service, cancel_and_wait
from streamproc.mapping.identity import TICKETMATIC, TICKETURE
from streamproc.mapping.output import PartitionCache, producer_abort
from streamproc.mapping.router import MappingContext, map_record
from streamproc.mapping.transaction import Hook, Mapper, Part, Transactor
from streamproc.topics import Topics

log = logging.getLogger(__name__)

COMPONENT = "map"


class MapProcessor(Service):
    """``streamproc map`` as a component: ``async with`` it, then ``await run(stop)``.

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
        # Input topic -> the source its items come from (the dedupe size is per source).
        self._sources = {self.topics.ticketmatic: "ticketmatic", self.topics.ticketure: "ticketure"}
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
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._retry_timeout_s = retry_timeout_s
        self._txn_timeout_s = settings.kafka.transaction_timeout_ms / 1000
        self._consumer_options = dict(consumer_options or {})
        self._sources = {self.topics.ticketmatic: TICKETMATIC, self.topics.ticketure: TICKETURE}
        self._consumer: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._parts: dict[TopicPartition, Part] = {}
        self._pending: dict[TopicPartition, float] = {}  # to set up, not before (monotonic)
        self._failing: dict[TopicPartition, tuple[float, Backoff]] = {}
        self._generation = 0
        self._fatal: BaseException | None = None
        self.fenced = 0  # commits refused because another producer took the partition over
        self.committed = 0  # source records whose transaction committed
        self._transactor = Transactor(
            self.topics, self.group_id, mapper, PartitionCache(), before_commit
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        self.health.set(COMPONENT, False, "starting")
        await self._check_copartitioned()
        restorer = kafka.consumer(self.settings.kafka, group_id=None, fetch_max_wait_ms=100)
        await restorer.start()
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
            await restorer.stop()
            raise
        self._consumer, self._restorer = consumer, restorer
        self.health.set(COMPONENT, False, "joining the consumer group")

    async def stop(self) -> None:
        """Finish (or after ``shutdown_timeout_s`` abort) open transactions, leave the group."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        parts = list(self._parts.values())
        self._parts.clear()
        self._pending.clear()
        await self._release(parts, self._shutdown_timeout_s, cancel=True)
        await consumer.stop()  # leaves the group: the partitions move at once
        if self._restorer is not None:
            await self._restorer.stop()
        for source in self._sources.values():
            metrics.DEDUPE_SIZE.labels(source).set(0)
        self.health.set(COMPONENT, False, "stopped")

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and dispatch until ``stop`` is set; raise what made a partition give up."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("MapProcessor.run() before start()")
        while not stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            now = time.monotonic()
            due = [tp for tp, when in self._pending.items() if when <= now]
            if due:
                await self._set_up(due)
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
        self._pending.clear()
        parts = [p for tp in revoked if (p := self._parts.pop(tp, None)) is not None]
        await self._release(parts, self._revoke_timeout_s)
        self._update_size()

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        self._failing.clear()
        # Nothing is read until the partition's producer has fenced the previous owner and
        # its state is restored (in run()): pause now, seek and resume after the set-up.
        self._generation += 1
        consumer = self._consumer
        if consumer is not None and assigned:
            consumer.pause(*assigned)
        now = time.monotonic()
        self._pending = dict.fromkeys(assigned, now)
        if assigned:
            self.health.set(COMPONENT, False, "restoring dedupe state")
        else:
            self.health.set(COMPONENT, True, "no partition assigned: standing by")

    async def _set_up(self, tps: Sequence[TopicPartition]) -> None:
        """Own ``tps``: fence the previous owners, restore state, seek to committed offsets."""
        consumer, restorer = self._consumer, self._restorer
        if consumer is None or restorer is None:
            return
        generation = self._generation
        owned = consumer.assignment()
        for tp in set(tps) - owned:
            self._pending.pop(tp, None)
        tps = sorted(set(tps) & owned)
        parts = {tp: Part(tp, self._sources[tp.topic], self._producer(tp)) for tp in tps}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._restore_timeout_s):
                states, committed = await self._fence_and_restore(consumer, restorer, parts)
        except (KafkaError, OSError, TimeoutError) as exc:
            await asyncio.gather(*(p.producer.stop() for p in parts.values()))
            for tp in tps:
                self._retry_later(tp, exc)
            self.health.set(COMPONENT, False, f"set-up failed: {exc!r}"[:200])
            return
        if generation != self._generation or not set(tps) <= consumer.assignment():
            # A rebalance happened meanwhile; its own set-up is pending.
            await asyncio.gather(*(p.producer.stop() for p in parts.values()))
            return
        metrics.DEDUPE_RESTORE.observe(time.monotonic() - started)
        for tp, part in parts.items():
            part.state = states[(part.source, tp.partition)]
            consumer.seek(tp, committed[tp])
            self._parts[tp] = part
            self._pending.pop(tp, None)
        if tps:
            consumer.resume(*tps)
            log.info(
                "map: own %s (dedupe state: %d ids, restored in %.2f s)",
                ", ".join(_name(tp) for tp in tps),
                sum(p.state.size for p in parts.values() if p.state is not None),
                time.monotonic() - started,
            )
        self._update_size()
        if not self._pending:
            self.health.set(COMPONENT, True, "")

    async def _fence_and_restore(
        self,
        consumer: AIOKafkaConsumer,
        restorer: AIOKafkaConsumer,
        parts: dict[TopicPartition, Part],
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
        wanted: dict[int, set[str]] = {}
        for tp, part in parts.items():
            wanted.setdefault(tp.partition, set()).add(part.source)
        states = await restore(
            restorer, self.topics.dedupe, wanted, self._new_state, self._restore_timeout_s
        )
        committed = {tp: await consumer.committed(tp) for tp in parts}
        missing = [tp for tp, offset in committed.items() if offset is None]
        if missing:
            committed.update(await consumer.beginning_offsets(missing))
        return states, committed

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
                self._failing.pop(part.tp, None)
                if part.paused and part.active and len(part.queue) < self._txn_max:
                    part.paused = False
                    if self._consumer is not None:
                        self._consumer.resume(part.tp)
        except Exception as exc:
            log.exception("map: unexpected error on %s", _name(part.tp))
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
            log.warning("map: %s: fenced, another consumer owns it now", _name(tp))
        else:
            log.warning("map: %s: transaction failed (%r); aborting", _name(tp), exc)
            try:
                await asyncio.wait_for(producer_abort(part.producer), timeout=5.0)
            except (KafkaError, TimeoutError) as abort_exc:
                log.info(
                    "map: %s: abort failed (%r), the next producer aborts it", _name(tp), abort_exc
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
        self._retry_later(tp, exc, self._fence_backoff_s if fenced else None)

    def _retry_later(
        self, tp: TopicPartition, exc: BaseException, delay: float | None = None
    ) -> None:
        now = time.monotonic()
        since, backoff = self._failing.setdefault(tp, (now, Backoff(*self._backoff)))
        if now - since > self._retry_timeout_s:
            self._fatal = exc
            log.error("map: %s failing for %.0f s, giving up: %r", _name(tp), now - since, exc)
            return
        wait = backoff.next() if delay is None else delay
        self._pending[tp] = now + wait
        self.health.set(COMPONENT, False, f"{_name(tp)}: {exc!r}"[:200])

    def _update_size(self) -> None:
        # One state per input partition: the input topic says whose ids it holds.
        sizes = dict.fromkeys(self._sources.values(), 0)
        for tp, part in self._parts.items():
            if part.state is not None:
                sizes[self._sources[tp.topic]] += part.state.size
        for source, size in sizes.items():
            metrics.DEDUPE_SIZE.labels(source).set(size)


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: MapProcessor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._processor._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._processor._assigned(set(assigned))
