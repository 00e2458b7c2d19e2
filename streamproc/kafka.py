"""aiokafka clients built from settings.

All clients get the same connection and security options (TLS, SASL PLAIN/SCRAM), so a
role never builds its own. Producers are idempotent with ``acks=all``; consumers read
``read_committed`` and never auto-commit: offsets move only with the output they led to.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamproc.config import MAX_LETTER_BYTES, KafkaSettings


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
