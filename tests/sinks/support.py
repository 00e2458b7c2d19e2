"""Helpers for the delivery tests: small valid batches, producing them, reading results."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import TopicPartition

from streamproc import kafka
from streamproc.config import MParticleSettings, Secret, Settings
from streamproc.formats import envelope
from streamproc.sim.mparticle import MParticleSim
from streamproc.topics import Topics

API_KEY = "feed-key"
API_SECRET = "feed-secret"
NAMESPACE = uuid.UUID("00000000-0000-0000-0000-00000000d311")


def request_id(i: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"batch-{i}"))


def make_batch(i: int, *, environment: str = "development", pad: int = 0) -> dict[str, Any]:
    """A batch that mParticle's published schema accepts (unless told otherwise)."""
    return {
        "source_request_id": request_id(i),
        "environment": environment,
        "user_identities": {"customer_id": f"visitor-{i % 7}"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "ticket purchased",
                    "custom_event_type": "transaction",
                    "timestamp_unixtime_ms": 1_700_000_000_000 + i,
                    "source_message_id": str(uuid.uuid5(NAMESPACE, f"event-{i}")),
                    "custom_attributes": {"seq": str(i), "pad": "x" * pad},
                },
            }
        ],
    }


def encode(batch: dict[str, Any]) -> bytes:
    return orjson.dumps(batch)


def deliver_settings(settings: Settings, sim: MParticleSim, **fields: Any) -> Settings:
    """``settings`` pointed at the simulator, with short timeouts and a high rate."""
    options: dict[str, Any] = {
        "base_url": sim.url,
        "api_key": API_KEY,
        "api_secret": Secret(API_SECRET),
        "rate_limit_batches_per_s": 10_000.0,
        "linger_ms": 5.0,
        "request_timeout_s": 5.0,
        "backoff_max_s": 0.2,
    }
    options.update(fields)
    return Settings(
        topic_prefix=settings.topic_prefix,
        kafka=settings.kafka,
        topics=settings.topics,
        mparticle=MParticleSettings(**options),
    )


async def produce(
    settings: Settings,
    values: Sequence[bytes],
    source: str = "ticketure",
    *,
    spread: bool = False,
) -> list[tuple[int, int]]:
    """Write ``values`` to the batches topic, keyed and with headers as the map stage does.

    ``spread``: value ``i`` goes to partition ``i % topics.partitions`` (the keys alone
    leave a partition of three empty). Returns (partition, offset) of each value, in order.
    """
    topic = Topics.for_prefix(settings.topic_prefix).batches
    producer = kafka.producer(settings.kafka)
    await producer.start()
    try:
        now = str(int(time.time() * 1000)).encode()
        futures = [
            await producer.send(
                topic,
                value,
                key=f"user-{i % 5}".encode(),
                partition=i % settings.topics.partitions if spread else None,
                headers=[
                    (envelope.H_SOURCE, source.encode()),
                    (envelope.H_ITEM_ID, str(i).encode()),
                    (envelope.H_ITEM_TIME, now),
                ],
            )
            for i, value in enumerate(values)
        ]
        placed = [await future for future in futures]
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in placed]


async def committed(settings: Settings, group_id: str, topic: str | None = None) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (the batches topic if None)."""
    topic = topic or Topics.for_prefix(settings.topic_prefix).batches
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def end_offsets(settings: Settings) -> dict[int, int]:
    """The end offset of every partition of the batches topic."""
    topic = Topics.for_prefix(settings.topic_prefix).batches
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = kafka.consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        # aiokafka: stopping a group-less consumer before its background task ever ran
        # raises CancelledError from stop(); one loop turn lets the task start.
        await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items() if offset > 0}


async def all_committed(settings: Settings, group_id: str) -> bool:
    """Whether the group has committed every record of the batches topic."""
    return await committed(settings, group_id) == await end_offsets(settings)
