"""What delivery to mParticle adds to the sink engine: packing, sending, refusals, the rate.

- Packing: a request carries batches of one partition only, at most 100 and 256 KiB
  (:mod:`.batcher`); a record that is empty, over 128 KiB or not a JSON object is refused
  before sending and dead-lettered with its reason.
- Sending: :class:`.Sender` carries each request to its end (202, 429 with Retry-After,
  5xx and timeouts retried, 400/413/422 split down to the batches refused, 401/403 waited
  out); the item times of the end-to-end histogram are taken at packing, while the
  records are fresh in the CPU's cache.
- The rate limit is the feed's (mParticle's limits are per API key): on every rebalance the
  sink takes the share of it that its partitions are of the topic's, so the group stays
  within it however many members it has. A request is at most one second of that share
  (and 100 batches).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streamproc import kafka
from streamproc.backoff import Backoff
from streamproc.config import KafkaSettings, MParticleSettings
from streamproc.dlq import DeadLetter
from streamproc.formats import envelope
from streamproc.formats.mparticle import ACCEPTED_BATCH_BYTES, MAX_BULK_BATCHES
from streamproc.health import Health
from streamproc.sinks.mparticle.batcher import Batch, PartitionBatchers, reject_reason
from streamproc.sinks.mparticle.client import MParticleClient
from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter
from streamproc.sinks.mparticle.sender import ItemTimes, Sender, item_times

log = logging.getLogger(__name__)

# A request: its batches (of one partition, in offset order) and their item times.
Request = tuple[list[Batch], ItemTimes]


class MParticleSink:
    """The :class:`streamproc.sinks.engine.Sink` of mParticle's bulk Events API."""

    def __init__(
        self,
        kafka_settings: KafkaSettings,
        mp: MParticleSettings,
        *,
        health: Health,
        origin_topic: str,
        dlq_topic: str,
    ) -> None:
        self._kafka = kafka_settings
        self.origin_topic = origin_topic
        self.dlq_topic = dlq_topic
        self.backoff_max_s = mp.backoff_max_s
        self.client = MParticleClient(
            mp.url(),
            mp.api_key,
            mp.api_secret.reveal() if mp.api_secret else "",
            timeout_s=mp.request_timeout_s,
            max_connections=max(1, mp.max_in_flight),
        )
        # No share of the feed's rate until partitions are assigned.
        self.limiter = AdaptiveRateLimiter(mp.rate_limit_batches_per_s, share=0.0)
        self.sender = Sender(
            self.client,
            self.limiter,
            health=health,
            backoff_base_s=mp.backoff_base_s,
            backoff_max_s=mp.backoff_max_s,
            retry_after_max_s=mp.retry_after_max_s,
            auth_retry_s=mp.auth_retry_s,
            max_retries=mp.max_retries or None,  # mparticle.max_retries 0 means no limit
        )
        self._batchers = PartitionBatchers()
        self._producer: AIOKafkaProducer | None = None

    # --- packing ------------------------------------------------------------------------

    @property
    def max_batches(self) -> int:
        return self._batchers.max_batches

    def __len__(self) -> int:
        return len(self._batchers)

    def pack(
        self, tp: TopicPartition, records: Sequence[Any], full: list[Request]
    ) -> list[tuple[Any, str]]:
        limit = ACCEPTED_BATCH_BYTES
        # The common case inline ('{' ... '}', within the limit): once per batch.
        postable = [
            record
            for record in records
            if (value := record.value)
            and len(value) <= limit
            and value[0] == 123
            and value[-1] == 125
        ]
        refused: list[tuple[Any, str]] = []
        if len(postable) != len(records):
            accepted = {id(record) for record in postable}
            refused = [
                (record, reject_reason(record.value) or "not_json_object")
                for record in records
                if id(record) not in accepted
            ]
        requests: list[list[Batch]] = []
        self._batchers.add_all(tp, postable, requests)
        full += [(request, item_times(request)) for request in requests]
        return refused

    def age(self) -> float:
        return self._batchers.age()

    def flush_due(self, linger_s: float, limit: int) -> list[Request]:
        due = self._batchers.flush_due(linger_s, limit)
        return [(request, item_times(request)) for request in due]

    def clear(self) -> None:
        self._batchers.clear()

    def records(self, request: Request) -> list[Batch]:
        return request[0]

    # --- sending ------------------------------------------------------------------------

    async def send(self, request: Request) -> None:
        await self.sender.send(request[0], self._dead_letter, request[1])

    async def refuse(self, record: Any, reason_code: str) -> None:
        size = len(record.value or b"")
        await self._dead_letter(record, reason_code, f"{size} bytes; not sent")

    async def _dead_letter(self, batch: Batch, reason_code: str, reason: str) -> None:
        """Write ``batch`` to the dead-letter topic, retrying until Kafka has it."""
        assert self._producer is not None  # noqa: S101 -- only called between start and stop
        letter = DeadLetter(
            stage="deliver",
            source=envelope.header(batch.headers, envelope.H_SOURCE) or "unknown",
            reason_code=reason_code,
            reason=reason,
            origin_topic=self.origin_topic,
            key=batch.key,
            value=batch.value or b"",
            headers=batch.headers,
        )
        backoff = Backoff(0.2, self.backoff_max_s)
        while True:
            try:
                await self._producer.send_and_wait(
                    self.dlq_topic, letter.value, key=letter.key, headers=letter.headers
                )
            except KafkaError as exc:
                log.warning("dead-letter write failed (%s); retrying", exc)
                await asyncio.sleep(backoff.next())
            else:
                letter.count()
                return

    def assigned(self, mine: int, total: int) -> None:
        """Take the feed's rate in proportion to the partitions held, and size requests.

        With every member doing so, the group's shares add up to the feed's rate at most
        (a member beyond the partition count gets none).
        """
        self.limiter.set_share(mine / total)
        # A request of at most one second of the share: mParticle counts batches per
        # second, and a larger request would land as a burst over it.
        burst = int(self.limiter.max_rate * self.limiter.burst_s)
        self._batchers.max_batches = max(1, min(MAX_BULK_BATCHES, burst))
        if mine:
            log.info(
                "rate limit: %d of %d partitions, %.1f of the feed's %.0f batches/s; "
                "requests of at most %d batches",
                mine,
                total,
                self.limiter.max_rate,
                self.limiter.feed_rate,
                self._batchers.max_batches,
            )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.client.start()
        self._producer = kafka.letter_producer(self._kafka)  # dead letters only
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self.client.stop()
