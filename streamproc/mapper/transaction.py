"""One map transaction: what a run of records of one input partition becomes.

For each record: its :class:`~.record.Plan` (source and ids from the headers, the mapping's
outcome), then a batch for ``mparticle.batches`` (unless the partition's dedupe state has
seen the item), a dead letter, or nothing (an unknown type is only counted). Then the
dedupe changelog records and the consumed offsets, all on the partition's transactional
producer, which commits them together. Counts reach the metrics only once the transaction
has committed: one that aborts and is redone counts once.

No record can stop the stage. The plan is the one place with a catch-all: an exception
that escapes it for a record (a bug: the pure path handles whatever a record can hold) is
logged once with its type and where it was raised (never the record's content), and the
record is dead-lettered with reason code ``internal_error`` in its own transaction, like
any unmappable item, so the partition goes on with the next record. What Kafka raises
while writing is not caught there: it fails the transaction, which is redone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from streamproc import dlq, kafka, metrics
from streamproc.dlq import DeadLetter
from streamproc.mapper.dedupe import Changes, DedupeState, changelog_key, encode_ids
from streamproc.mapping.record import Mapper, Plan, plan
from streamproc.mapping.router import Mapped, Unknown, Unmappable
from streamproc.topics import Topics

__all__ = ["INTERNAL_ERROR", "Hook", "Mapper", "Part", "Transactor", "safe_plan"]

log = logging.getLogger(__name__)

Hook = Callable[[TopicPartition], Awaitable[None]]

# The reason code of a record the map stage failed on unexpectedly: a bug to fix, then
# `dlq replay`; distinct from the codes of items that are wrong (undecodable...).
INTERNAL_ERROR = "internal_error"
_PACKAGE = Path(__file__).resolve().parents[1]


class Part:
    """An input partition this process owns: its producer, dedupe state and queue."""

    def __init__(self, tp: TopicPartition, source: str, producer: AIOKafkaProducer) -> None:
        self.tp = tp
        self.source = source
        self.producer = producer
        self.state: DedupeState | None = None
        self.queue: list[Any] = []  # polled records not yet in a transaction
        self.task: asyncio.Task[None] | None = None
        self.active = True  # False once revoked or failed: no new transaction starts
        self.paused = False  # paused because its queue is full


@dataclass
class _Counts:
    """What one transaction counted, published only once it commits."""

    items: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # source, type, outcome
    hits: Counter[str] = field(default_factory=Counter)  # dedupe hits by source
    truncated: Counter[str] = field(default_factory=Counter)
    dead: Counter[tuple[str, str]] = field(default_factory=Counter)  # by source, reason code

    def publish(self) -> None:
        for labels, n in self.items.items():
            metrics.MAP_ITEMS.labels(*labels).inc(n)
        for source, n in self.hits.items():
            metrics.DEDUPE_HITS.labels(source).inc(n)
        for what, n in self.truncated.items():
            metrics.MAP_TRUNCATED.labels(what).inc(n)
        for (source, reason_code), n in self.dead.items():
            dlq.counted("map", source, reason_code, n)


class Transactor:
    """Runs the map stage's transactions (see the module doc); keeps no partition state.

    ``before_commit`` is awaited just before each commit (tests hold a transaction open
    with it, or fail it).
    """

    def __init__(
        self,
        topics: Topics,
        group_id: str,
        mapper: Mapper,
        keys: kafka.KeyPartitions,
        before_commit: Hook | None = None,
    ) -> None:
        self.topics = topics
        self.group_id = group_id
        self._map = mapper
        self._keys = keys
        self._before_commit = before_commit

    async def run(self, part: Part, records: list[Any]) -> bool:
        """One transaction for ``records`` of ``part``; False if ``part`` has no state yet.

        Raises what the producer raises (the caller aborts and sets the partition up again).
        """
        state, producer, tp = part.state, part.producer, part.tp
        if state is None:
            return False
        txn = state.begin()
        counts = _Counts()
        await producer.begin_transaction()
        out = kafka.BatchWriter(producer, self._keys)
        batches = self.topics.batches
        for record in records:
            step = safe_plan(part, record, self._map)
            source, outcome = step.source, step.outcome
            if type(outcome) is Mapped:
                if txn.seen(step.dedupe):
                    counts.items[(source, outcome.item_type, "duplicate")] += 1
                    counts.hits[source] += 1
                    continue
                txn.add(step.dedupe, outcome.item_time_ms)
                await out.add(batches, step.key, outcome.batch, step.headers)
                kind = "forwarded" if outcome.forwarded else "mapped"
                counts.items[(source, outcome.item_type, kind)] += 1
                if outcome.truncations:
                    counts.truncated.update(outcome.truncations)
            elif type(outcome) is Unknown:
                counts.items[(source, outcome.item_type, "unknown_type")] += 1
            elif isinstance(outcome, Unmappable):
                await self._dead_letter(producer, record, source, outcome)
                counts.items[(source, outcome.item_type, "dead_lettered")] += 1
                counts.dead[(source, outcome.reason_code)] += 1
        await out.flush()
        changes = txn.changes(int(time.time() * 1000))
        await self._write_changelog(part, changes, records[0].offset)
        await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
        if self._before_commit is not None:
            await self._before_commit(tp)
        await producer.commit_transaction()
        state.apply(changes, records[0].offset)
        counts.publish()
        return True

    async def _dead_letter(
        self, producer: AIOKafkaProducer, record: Any, source: str, outcome: Unmappable
    ) -> None:
        letter = DeadLetter(
            stage="map",
            source=source,
            reason_code=outcome.reason_code,
            reason=outcome.reason,
            origin_topic=record.topic,
            key=record.key,
            value=record.value or b"",
            headers=record.headers,
        )
        await producer.send(self.topics.dlq, letter.value, key=letter.key, headers=letter.headers)

    async def _write_changelog(self, part: Part, changes: Changes, offset: int) -> None:
        topic, partition = self.topics.dedupe, part.tp.partition
        for bucket, (newest, hashes) in changes.records.items():
            key = changelog_key(part.source, bucket, offset)
            await part.producer.send(
                topic, encode_ids(newest, hashes), key=key, partition=partition
            )
        for bucket, offsets in changes.expired:
            for first in offsets:
                key = changelog_key(part.source, bucket, first)
                await part.producer.send(topic, None, key=key, partition=partition)


def safe_plan(part: Part, record: Any, mapper: Mapper) -> Plan:
    """:func:`.record.plan` for ``record`` of ``part``, or if it raises (a bug), the plan to
    dead-letter the record as ``internal_error``: the one per-record safety net.
    """
    try:
        return plan(part.source, record.headers, record.value, mapper)
    except Exception as exc:  # noqa: BLE001 -- the per-record boundary: see the module doc
        where = _raised_at(exc)
        # The type and the code's place only, no traceback: its message may quote the record.
        log.error(  # noqa: TRY400
            "map: %s[%d] offset %d: unexpected %s in %s; the record is dead-lettered",
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
            where,
        )
        reason = f"{where}: unexpected {type(exc).__name__} (a bug: see the map stage's log)"
        return Plan(part.source, "", Unmappable("unknown", INTERNAL_ERROR, reason), [])


def _raised_at(exc: BaseException) -> str:
    """The innermost streamproc function ``exc`` passed through, as ``module.function``."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_PACKAGE):
            module = ".".join(path.relative_to(_PACKAGE.parent).with_suffix("").parts)
            return f"{module}.{frame.name}"
    return "the map stage"
