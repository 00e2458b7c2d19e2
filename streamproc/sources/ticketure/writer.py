"""Writing accepted audit records to ``ticketure.audit``, and knowing whether Kafka is there.

:meth:`KafkaWriter.write` returns only once Kafka has acknowledged every record it was
given (idempotent producer, ``acks=all``); it raises :class:`TransportError` when Kafka
does not acknowledge them within ``produce_timeout_s`` or refuses them, and at once while
Kafka is known to be unreachable. Records sent before such a failure may still land later:
the sender, told to retry, then pushes duplicates that dedupe removes by item id.

A probe checks every ``probe_interval_s`` that a broker answers and that the topic exists,
and sets readiness (component ``receiver.kafka``). While Kafka is down the producer is
dropped (its unacknowledged batches belong to requests already answered 503) and a new one
connects once a broker answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from streamproc import kafka
from streamproc.config import MAX_RECORD_BYTES, Settings
from streamproc.dlq import DeadLetter
from streamproc.errors import StreamprocError, TransportError
from streamproc.formats import envelope
from streamproc.formats.envelope import Source
from streamproc.formats.ticketure import ENCODER
from streamproc.health import Health
from streamproc.lifecycle import Service, cancel_and_wait
from streamproc.sources.ticketure.audit_shape import Accepted
from streamproc.topics import Topics

log = logging.getLogger(__name__)

COMPONENT = "receiver.kafka"
ABANDON_TIMEOUT_S = 2.0  # to close a dropped producer's connections


class RecordTooLarge(StreamprocError):
    """A record Kafka would never take (over ``MAX_RECORD_BYTES``): retrying cannot help.

    ``index`` is the record's place in what :meth:`KafkaWriter.write` was given, if known.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class KafkaWriter(Service):
    """One producer for the receiver's records and dead letters; ``start``/``stop`` idempotent."""

    def __init__(
        self,
        settings: Settings,
        health: Health,
        *,
        produce_timeout_s: float = 5.0,
        probe_interval_s: float = 1.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.topics = Topics.for_prefix(settings.topic_prefix)
        self._kafka = settings.kafka
        self._health = health
        self._produce_timeout_s = produce_timeout_s
        self._probe_interval_s = probe_interval_s
        self._stop_timeout_s = stop_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._up = False
        self._probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Whether the last produce or probe reached Kafka."""
        return self._up and self._producer is not None

    async def start(self) -> None:
        """Connect once (a failure is not fatal: the probe keeps trying), start the probe."""
        if self._probe is not None:
            return
        self._health.set(COMPONENT, False, "connecting")
        await self._connect()
        self._probe = asyncio.create_task(self._probe_loop(), name="ticketure-kafka-probe")

    async def stop(self) -> None:
        """Stop probing, flush what is pending (within ``stop_timeout_s``), disconnect."""
        probe, self._probe = self._probe, None
        await cancel_and_wait([probe])
        await self._close(self._producer)
        self._producer = None
        self._up = False
        self._health.set(COMPONENT, False, "stopped")

    async def write(self, sender: bytes, accepted: list[Accepted], received_ms: int) -> None:
        """Send every record, then wait for all acknowledgements.

        Raises TransportError (retriable) when Kafka is away or too slow, RecordTooLarge
        for a record Kafka refuses by size.
        """
        producer = self._producer
        if producer is None or not self._up:
            raise TransportError("Kafka is unreachable")
        topic = self.topics.ticketure
        received = str(received_ms).encode()
        records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        for index, (record, time_ms, _) in enumerate(accepted):
            # Without an order, the item id keeps a retried push on the same partition,
            # where the map stage's dedupe can see it.
            key = (record.order_key() or f"item:{record.event_id}").encode()
            value = ENCODER.encode(record)
            headers = [
                (envelope.H_SOURCE, Source.TICKETURE.header),
                (envelope.H_SENDER, sender),
                (envelope.H_ITEM_ID, (record.event_id or "").encode()),
                (envelope.H_ITEM_TIME, str(time_ms).encode()),
                (envelope.H_RECEIVED, received),
            ]
            # Checked before anything is sent: a push is written whole or not at all.
            if kafka.record_size(key, value, headers) > MAX_RECORD_BYTES:
                raise RecordTooLarge(
                    f"the event is larger than a Kafka record may be ({MAX_RECORD_BYTES} B)",
                    index,
                )
            records.append((key, value, headers))
        futures: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                for key, value, headers in records:
                    futures.append(await producer.send(topic, value, key=key, headers=headers))
                # Cancelling these on timeout is harmless: aiokafka skips futures that
                # are done when the broker answers.
                for future in futures:
                    await future
        except TimeoutError:
            self._down(f"no acknowledgement within {self._produce_timeout_s:.1f} s")
            raise TransportError("Kafka did not acknowledge in time") from None
        except MessageSizeTooLargeError:  # the broker's limit is lower than ours
            raise RecordTooLarge("Kafka refuses a record of this push as too large") from None
        except KafkaError as exc:
            self._down(f"send failed: {exc!r}")
            raise TransportError(f"Kafka refused the records: {exc!r}") from None

    async def dead_letter(self, letter: DeadLetter) -> bool:
        """Write ``letter`` to the DLQ and wait for the ack; False (logged) if Kafka is away."""
        producer = self._producer
        if producer is None or not self._up:
            log.warning(
                "could not dead-letter a rejected push (%s): Kafka is unreachable",
                letter.reason_code,
            )
            return False
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                await producer.send_and_wait(
                    self.topics.dlq, letter.value, key=letter.key, headers=letter.headers
                )
        except (TimeoutError, KafkaError) as exc:
            log.warning("could not dead-letter a rejected push (%s): %r", letter.reason_code, exc)
            return False
        return True

    def _down(self, reason: str) -> None:
        if self._up:
            log.warning("Kafka is unavailable to the receiver: %s", reason)
        self._up = False
        self._health.set(COMPONENT, False, reason)

    async def _connect(self) -> None:
        producer = kafka.producer(self._kafka, max_batch_size=256 * 1024)
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                await producer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            self._down(f"cannot connect: {exc!r}")
            await self._close(producer)
            return
        except asyncio.CancelledError:  # stop() while connecting: leave nothing open
            await self._abandon(producer, quiet=True)
            raise
        self._producer = producer
        await self._check()

    async def _check(self) -> None:
        """Ask a broker for our topics' metadata: up if it answers and the topic exists.

        Only the receiver's topics are asked for (a cluster may hold thousands), on the
        producer's own client, which so keeps its partition leaders fresh.
        """
        producer = self._producer
        if producer is None:
            return
        client = producer.client
        client.add_topic(self.topics.ticketure)
        client.add_topic(self.topics.dlq)
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                answered = await client.force_metadata_update()
        except TimeoutError:
            answered = False
        if not answered:
            self._down("no broker answers")
            return
        if client.cluster.partitions_for_topic(self.topics.ticketure) is None:
            self._down(f"topic {self.topics.ticketure} does not exist")
            return
        if not self._up:
            log.info("Kafka is available to the receiver")
        self._up = True
        self._health.set(COMPONENT, True)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if self._producer is None:
                await self._connect()
                continue
            await self._check()
            if not self._up:
                # aiokafka retries batches for an unreachable broker in a tight loop (its
                # sender spins on metadata updates). Those batches belong to requests
                # already answered 503, so drop the producer at once and connect afresh
                # once a broker answers.
                old, self._producer = self._producer, None
                await self._abandon(old)

    async def _close(self, producer: AIOKafkaProducer | None) -> None:
        """Flush and stop ``producer`` within ``stop_timeout_s``, else abandon it."""
        if producer is None:
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await producer.stop()
        except TimeoutError:
            log.warning("Kafka producer did not flush within %.0f s", time.monotonic() - started)
            await self._abandon(producer)
        except KafkaError as exc:
            log.warning("Kafka producer stopped with an error: %r", exc)

    async def _abandon(self, producer: AIOKafkaProducer, *, quiet: bool = False) -> None:
        """Stop ``producer`` without flushing: its pending records were answered 503.

        aiokafka's stop() waits for pending batches without end while no broker answers,
        so its sender task is cancelled first; stop() then only closes connections.
        """
        if not quiet:
            log.warning("dropping the Kafka producer; records not yet acknowledged are dropped")
        sender_task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender_task is not None:
            sender_task.cancel()
        with contextlib.suppress(TimeoutError, KafkaError):
            async with asyncio.timeout(ABANDON_TIMEOUT_S):
                await producer.stop()
        # stop() returns at once on a producer whose stop() was cut short: close anyway.
        with contextlib.suppress(Exception):
            await producer.client.close()
