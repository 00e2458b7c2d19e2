"""aiokafka clients built from settings, the one batch writer, and what we know of aiokafka's
internals (nowhere else).

All clients get the same connection and security options (TLS, SASL PLAIN/SCRAM), so a
role never builds its own. Producers are idempotent with ``acks=all``; consumers read
``read_committed`` and never auto-commit: offsets move only with the output they led to.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import AuthenticationFailedError, KafkaError, SaslAuthenticationFailed
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamproc.config import MAX_LETTER_BYTES, KafkaSettings

_PARTITIONER = DefaultPartitioner()


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection options common to producers, consumers and the admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        context.check_hostname = settings.ssl_check_hostname
        opts["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.sasl_mechanism
        opts["sasl_plain_username"] = settings.sasl_username
        opts["sasl_plain_password"] = (
            settings.sasl_password.reveal() if settings.sasl_password else None
        )
    return opts


async def diagnose(settings: KafkaSettings) -> str:
    """Why a client cannot bootstrap, in words: aiokafka says only "Unable to bootstrap".

    Connects to the first bootstrap server as every client does (TLS, SASL) and names what
    fails: authentication, the TLS handshake, the connection itself.
    """
    server = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    opts = client_options(settings)
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host.strip("[]"),
                int(port),
                client_id=settings.client_id,
                request_timeout_ms=settings.request_timeout_ms,
                ssl_context=opts.get("ssl_context"),
                security_protocol=settings.security_protocol,
                sasl_mechanism=opts.get("sasl_mechanism") or "PLAIN",
                sasl_plain_username=opts.get("sasl_plain_username"),
                sasl_plain_password=opts.get("sasl_plain_password"),
            ),
            settings.request_timeout_ms / 1000,
        )
    except (SaslAuthenticationFailed, AuthenticationFailedError):
        return (
            f"authentication failed: {server} refused SASL {settings.sasl_mechanism} for user "
            f"{settings.sasl_username!r} (kafka.sasl_username / kafka.sasl_password)"
        )
    except ssl.SSLError as exc:
        return f"TLS handshake with {server} failed: {exc.reason or exc} (kafka.ssl_cafile)"
    except (OSError, TimeoutError) as exc:
        return f"cannot connect to {server}: {exc or type(exc).__name__}"
    except (KafkaError, ValueError) as exc:
        return f"{server}: {type(exc).__name__}: {exc}"
    conn.close()
    return f"{server} answers, but the cluster's metadata could not be read"


def letter_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """A :func:`producer` that may send dead letters of records of up to ``MAX_RECORD_BYTES``.

    Only the dead-letter topic takes records that large (``max.message.bytes``, set by
    ``streamproc topics ensure``); the other topics keep Kafka's default of 1 MiB.
    """
    return producer(settings, max_request_size=MAX_LETTER_BYTES, **overrides)


def producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent, ``acks=all``, compressing producer; ``transactional_id`` for transactions."""
    opts = client_options(settings)
    opts.update(enable_idempotence=True, acks="all", linger_ms=5)
    if settings.compression_type != "none":
        opts["compression_type"] = settings.compression_type
    if overrides.get("transactional_id"):
        opts["transaction_timeout_ms"] = settings.transaction_timeout_ms
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def record_size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """What Kafka counts for one record in a batch of its own (an upper bound), against
    ``MAX_RECORD_BYTES`` (the source and batches topics) or ``MAX_LETTER_BYTES`` (the DLQ)."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


def consumer(settings: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer with auto-commit off."""
    opts = client_options(settings)
    opts.update(
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        # The broker answers a fetch at once when it has data; this bounds the wait of a
        # quiet partition (default 500 ms), which end-to-end latency would otherwise pay.
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)


def admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    """An admin client with the same connection options."""
    opts = client_options(settings)
    opts.pop("client_id")
    return AIOKafkaAdminClient(client_id=settings.client_id + "-admin", **opts)


async def partitions(client: AIOKafkaAdminClient, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics`` that exist, in topic then partition order."""
    if not topics:  # an empty metadata request means every topic of the cluster
        return []
    described = await client.describe_topics(list(topics))
    return [
        TopicPartition(d["topic"], p["partition"])
        for d in sorted(described, key=lambda d: str(d["topic"]))
        if d["error_code"] == 0
        for p in sorted(d["partitions"], key=lambda p: int(p["partition"]))
    ]


class KeyPartitions:
    """A key's partition as Kafka's default partitioner picks it (murmur2, as Java's clients),
    cached: murmur2 in pure Python costs more than the rest of a record, and keys (visitors,
    orders, accounts) repeat. At most ``size`` keys are held; a topic whose partition count
    changes starts over.
    """

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._topics: dict[str, tuple[list[int], dict[bytes, int]]] = {}

    def of(self, topic: str, partitions: list[int], key: bytes) -> int:
        known = self._topics.get(topic)
        if known is None or known[0] != partitions or len(known[1]) >= self._size:
            known = self._topics[topic] = (partitions, {})
        cached = known[1].get(key)
        if cached is None:
            cached = known[1][key] = _PARTITIONER(key, partitions, partitions)
        return cached


class BatchWriter:
    """Records written as whole record batches, one being built per partition: the one
    writer of poll and map, inside their transactions.

    ``producer.send`` costs a coroutine, a future and a size estimate per record; building
    the batches here (``create_batch``/``send_batch``) is about a third cheaper. Order per
    partition is kept. Inside a transaction each partition joins it as with ``send``, and a
    failed batch fails the commit, which is what reports the outcome: the batches' own
    futures are read here so that their errors are never reported as lost.
    """

    def __init__(self, producer: AIOKafkaProducer, keys: KeyPartitions) -> None:
        self._producer = producer
        self._keys = keys
        self._partitions: dict[str, list[int]] = {}
        self._builders: dict[tuple[str, int], Any] = {}  # aiokafka's BatchBuilder

    async def add(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        *,
        partition: int | None = None,
    ) -> None:
        """Add one record: to ``partition``, or to the one its key hashes to."""
        if partition is None:
            partitions = self._partitions.get(topic)
            if partitions is None:
                partitions = sorted(await self._producer.partitions_for(topic))
                self._partitions[topic] = partitions
            partition = self._keys.of(topic, partitions, key)
        slot = (topic, partition)
        builder = self._builders.get(slot)
        if builder is None:
            builder = self._builders[slot] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # Full: hand it over and start the next one (a first record always fits).
            await self._send(topic, partition, builder)
            builder = self._builders[slot] = self._producer.create_batch()
            builder.append(key=key, value=value, timestamp=None, headers=headers)

    async def flush(self) -> None:
        """Hand every batch being built to the producer (before the commit)."""
        builders, self._builders = self._builders, {}
        for (topic, partition), builder in builders.items():
            await self._send(topic, partition, builder)

    async def _send(self, topic: str, partition: int, builder: Any) -> None:
        future = await self._producer.send_batch(builder, topic, partition=partition)
        future.add_done_callback(seen)


def seen(future: asyncio.Future[Any]) -> None:
    """Read a future's outcome, so that a failure another path reports is not logged as lost."""
    if not future.cancelled():
        future.exception()


def queued_batches(producer: AIOKafkaProducer) -> list[Any]:
    """aiokafka's record batches queued or in flight (private attributes, read only)."""
    accumulator = getattr(producer, "_message_accumulator", None)
    queued = [b for q in getattr(accumulator, "_batches", {}).values() for b in q]
    return queued + list(getattr(accumulator, "_pending_batches", ()))


def mark_drains_seen(batches: Sequence[Any]) -> None:
    """When a fenced producer gives up, aiokafka fails the batches it could not send,
    including a drain waiter per batch that nobody awaits: read those errors too."""
    for batch in batches:
        waiter = getattr(batch, "_drain_waiter", None)
        if isinstance(waiter, asyncio.Future):
            waiter.add_done_callback(seen)


async def abort(producer: AIOKafkaProducer) -> None:
    """Abort the open transaction, if the producer is still able to."""
    try:
        await producer.abort_transaction()
    except AssertionError:
        # aiokafka asserts on a state transition it does not allow (no open transaction).
        return
