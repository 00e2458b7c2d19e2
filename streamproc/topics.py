"""The topics streamproc uses, and ``ensure``/``describe`` over the admin client.

``ensure`` creates what is missing and sets retention and cleanup policy on what exists;
it never deletes and is safe to run again. A topic with fewer partitions than configured
is grown; one with more is left as it is and reported.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamproc import kafka
from streamproc.config import MAX_LETTER_BYTES, Settings

log = logging.getLogger(__name__)


class TopicSpec(msgspec.Struct, frozen=True):
    role: str
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


class Topics(msgspec.Struct, frozen=True):
    """Topic names for one prefix."""

    ticketmatic: str
    cursors: str
    ticketure: str
    batches: str
    dedupe: str
    dlq: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Topics:
        return cls(
            ticketmatic=f"{prefix}ticketmatic.eventstream",
            cursors=f"{prefix}ticketmatic.cursors",
            ticketure=f"{prefix}ticketure.audit",
            batches=f"{prefix}mparticle.batches",
            dedupe=f"{prefix}streamproc.dedupe",
            dlq=f"{prefix}streamproc.dlq",
        )


def specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the product uses, with partitions, retention and cleanup policy."""
    t = settings.topics
    names = Topics.for_prefix(settings.topic_prefix)
    rf = t.replication_factor
    min_isr = str(min(2, rf))

    def delete(retention_ms: int) -> dict[str, str]:
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "min.insync.replicas": min_isr,
        }

    compact = {"cleanup.policy": "compact", "min.insync.replicas": min_isr}
    return [
        TopicSpec(
            "ticketmatic", names.ticketmatic, t.partitions, rf, delete(t.source_retention_ms)
        ),
        # One record per account, compacted: the latest cursor is all that matters. Its
        # partitions are also how poller replicas share the accounts (one owner each).
        TopicSpec("cursors", names.cursors, t.partitions, rf, compact),
        TopicSpec("ticketure", names.ticketure, t.partitions, rf, delete(t.source_retention_ms)),
        TopicSpec("batches", names.batches, t.partitions, rf, delete(t.batches_retention_ms)),
        # Dedupe changelog: co-partitioned with the map stage's inputs (same count).
        TopicSpec("dedupe", names.dedupe, t.partitions, rf, compact),
        # A dead letter is a record of up to MAX_RECORD_BYTES plus its headers.
        TopicSpec(
            "dlq",
            names.dlq,
            t.partitions,
            rf,
            delete(t.dlq_retention_ms) | {"max.message.bytes": str(MAX_LETTER_BYTES)},
        ),
    ]


async def ensure(settings: Settings) -> list[str]:
    """Create or align every topic; return one line per topic saying what was done."""
    wanted = specs(settings)
    report: list[str] = []
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [s for s in wanted if s.name not in existing]
        if missing:
            await client.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                    for s in missing
                ]
            )
            report += [f"created {s.name} ({s.partitions} partitions)" for s in missing]
            await _wait_for_leaders(client, [s.name for s in missing])
        present = [s for s in wanted if s.name in existing]
        if present:
            described = {
                d["topic"]: d for d in await client.describe_topics([s.name for s in present])
            }
            grow = {}
            for s in present:
                have = len(described[s.name]["partitions"])
                if have < s.partitions:
                    grow[s.name] = NewPartitions(s.partitions)
                    report.append(f"grew {s.name} from {have} to {s.partitions} partitions")
                elif have > s.partitions:
                    report.append(f"kept {s.name} at {have} partitions (more than {s.partitions})")
                else:
                    report.append(f"kept {s.name} ({have} partitions)")
            if grow:
                await client.create_partitions(grow)
            await client.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, s.name, configs=s.config)
                    for s in present
                ]
            )
    finally:
        await client.close()
    for line in report:
        log.info("topics: %s", line)
    return report


async def _wait_for_leaders(
    client: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0
) -> None:
    """Wait until every partition of ``names`` has a leader, so first writes do not bounce."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        described = await client.describe_topics(names)
        if all(
            d["error_code"] == 0
            and d["partitions"]
            and all(p["leader"] >= 0 for p in d["partitions"])
            for d in described
        ):
            return
        await asyncio.sleep(0.1)
    log.warning("topics: some partitions of %s have no leader after %.0f s", names, timeout_s)


async def describe(settings: Settings) -> list[dict[str, Any]]:
    """Partitions and the configuration that matters, for each of the product's topics."""
    wanted = specs(settings)
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        existing = set(await client.list_topics())
        present = [s for s in wanted if s.name in existing]
        configs: dict[str, dict[str, str]] = {}
        if present:
            responses = await client.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present]
            )
            for response in responses:
                for resource in response.resources:
                    _code, _msg, _type, name, entries = resource[:5]
                    configs[name] = {e[0]: e[1] for e in entries}
            described = {
                d["topic"]: d for d in await client.describe_topics([s.name for s in present])
            }
        out = []
        for s in wanted:
            if s.name not in existing:
                out.append({"role": s.role, "topic": s.name, "exists": False})
                continue
            conf = configs.get(s.name, {})
            out.append(
                {
                    "role": s.role,
                    "topic": s.name,
                    "exists": True,
                    "partitions": len(described[s.name]["partitions"]),
                    "cleanup.policy": conf.get("cleanup.policy"),
                    "retention.ms": conf.get("retention.ms"),
                    "min.insync.replicas": conf.get("min.insync.replicas"),
                    "max.message.bytes": conf.get("max.message.bytes"),
                }
            )
        return out
    finally:
        await client.close()


async def retention_ms(settings: Settings, topic: str) -> int | None:
    """The topic's ``retention.ms`` as the broker has it (None if unknown or infinite)."""
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        responses = await client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})]
        )
        for response in responses:
            for resource in response.resources:
                for entry in resource[4]:
                    if entry[0] == "retention.ms" and entry[1] is not None:
                        value = int(entry[1])
                        return value if value >= 0 else None
        return None
    finally:
        await client.close()
