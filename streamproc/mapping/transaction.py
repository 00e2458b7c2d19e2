"""One map transaction: what a run of records of one input partition becomes.

For each record: its source and ids from the headers, the mapping's outcome, then a batch
for ``mparticle.batches`` (unless the partition's dedupe state has seen the item), a dead
letter, or nothing (an unknown type is only counted). Then the dedupe changelog records
and the consumed offsets, all on the partition's transactional producer, which commits
them together. Counts reach the metrics only once the transaction has committed: one that
aborts and is redone counts once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from streamproc import dlq, kafka, metrics
from streamproc.dedupe import Changes, DedupeState, changelog_key, encode_ids, item_hash
from streamproc.dlq import DeadLetter
from streamproc.mapping.identity import TICKETMATIC, TICKETURE, item_id_of
from streamproc.mapping.output import BatchOutput, PartitionCache
from streamproc.mapping.router import MapOutcome, Mapped, Unknown, Unmappable
from streamproc.topics import Topics

log = logging.getLogger(__name__)

# (source, value, item id, account) -> outcome; streamproc.mapping.router.map_record.
Mapper = Callable[[str, bytes, str, str | None], MapOutcome]
Hook = Callable[[TopicPartition], Awaitable[None]]


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
        partition_cache: PartitionCache,
        before_commit: Hook | None = None,
    ) -> None:
        self.topics = topics
        self.group_id = group_id
        self._map = mapper
        self._partition_cache = partition_cache
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
        partitions = await producer.partitions_for(self.topics.batches)
        out = BatchOutput(producer, self.topics.batches, partitions, self._partition_cache)
        for record in records:
            source, item_id, account, passed, has_time = self._headers(part, record)
            outcome = self._outcome(source, record.value, item_id, account)
            if type(outcome) is Mapped:
                h = item_hash(source, item_id)
                if txn.seen(h):
                    counts.items[(source, outcome.item_type, "duplicate")] += 1
                    counts.hits[source] += 1
                    continue
                txn.add(h, outcome.item_time_ms)
                if not has_time:
                    passed.append((kafka.H_ITEM_TIME, str(outcome.item_time_ms).encode()))
                await out.add(outcome.key.encode(), outcome.batch, passed)
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

    @staticmethod
    def _headers(part: Part, record: Any) -> tuple[str, str, str | None, kafka.Headers, bool]:
        """Source, item id, account, the headers to pass on and whether they hold the time."""
        source = header_id = account = None
        has_time = False
        passed: kafka.Headers = []
        for key, value in record.headers:
            if key == kafka.H_SOURCE:
                source = value.decode("utf-8", "replace")
            elif key == kafka.H_ITEM_ID:
                header_id = value.decode("utf-8", "replace")
            elif key == kafka.H_ACCOUNT:
                account = value.decode("utf-8", "replace")
                passed.append((key, value))
            elif key == kafka.H_ITEM_TIME:
                has_time = True
                passed.append((key, value))
            elif key == kafka.H_RECEIVED:
                passed.append((key, value))
        if source not in (TICKETMATIC, TICKETURE):
            source = part.source
        own_id = item_id_of(source, record.value or b"", header_id)
        item_id = item_id_of(source, record.value or b"", own_id, account)
        passed.append((kafka.H_SOURCE, source.encode()))
        # The header keeps the source's own id (the account travels in its own header).
        passed.append((kafka.H_ITEM_ID, own_id.encode()))
        return source, item_id, account, passed, has_time

    def _outcome(
        self, source: str, value: bytes | None, item_id: str, account: str | None
    ) -> MapOutcome:
        if value is None:
            return Unmappable("undecodable", "undecodable", "the record has no value")
        try:
            return self._map(source, value, item_id, account)
        except Exception as exc:
            # A mapping bug must not stop the pipeline: park the item with the reason.
            log.exception("map: mapping %s item %s raised", source, item_id)
            return Unmappable("unknown", "internal_error", f"mapping raised {exc!r}"[:500])
