"""Shared pieces of the poller's integration tests: settings, a topic reader, the checks."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streamproc import kafka
from streamproc.config import Secret, Settings, TicketmaticAccount, TicketmaticSettings
from streamproc.formats import envelope
from streamproc.formats.ticketmatic import position_key
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic.page import H_POLLER


def tm_settings(
    make_settings: Callable[..., Settings],
    sim: TicketmaticSim,
    accounts: Iterable[SimAccount],
    *,
    basic: Iterable[str] = (),
    partitions: int = 3,
    **ticketmatic: Any,
) -> Settings:
    """Settings pointing at ``sim`` for ``accounts`` (``basic`` ones use basic auth)."""
    basic = set(basic)
    fields: dict[str, Any] = {"poll_interval_s": 0.1, "request_timeout_s": 5.0}
    fields.update(ticketmatic)
    return make_settings(
        partitions=partitions,
        ticketmatic=TicketmaticSettings(
            base_url=sim.url,
            accounts=[
                TicketmaticAccount(
                    name=a.name,
                    access_key=a.access_key,
                    secret_key=Secret(a.secret_key),
                    auth="basic" if a.name in basic else "hmac",
                )
                for a in accounts
            ],
            **fields,
        ),
    )


class TopicReader:
    """Reads a topic from the start, ``read_committed``, accumulating what it sees."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        partitions = await topic_partitions(self.settings, self.topic)
        consumer = kafka.consumer(self.settings.kafka, group_id=None)
        await consumer.start()
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def read(self, timeout_ms: int = 200) -> int:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        for tp in sorted(batch):
            self.records += batch[tp]
        return len(self.records)

    async def until(
        self, done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool], timeout_s: float
    ) -> None:
        """Read until ``done(records)`` (AssertionError after ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done(self.records):
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.topic}: only {len(self.records)} records after {timeout_s} s"
                )
            await self.read()

    async def settle(self, quiet_s: float = 1.0) -> None:
        """Read on until nothing new arrives for ``quiet_s`` (catches stray extra records)."""
        before = -1
        while before != len(self.records):
            before = len(self.records)
            await self.read(int(quiet_s * 1000))

    def ids(self, account: str | None = None) -> list[str]:
        return [
            envelope.header(r.headers, envelope.H_ITEM_ID) or ""
            for r in self.records
            if account is None or envelope.header(r.headers, envelope.H_ACCOUNT) == account
        ]


async def topic_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, from the admin client."""
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]


def complete(
    sim: TicketmaticSim, accounts: Iterable[str]
) -> Callable[[list[ConsumerRecord[bytes, bytes]]], bool]:
    """True once every kept item of ``accounts`` is among the records (by id)."""
    wanted = {(a, i) for a in accounts for i, _ in sim.items(a)}

    def done(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        have = {
            (
                envelope.header(r.headers, envelope.H_ACCOUNT),
                envelope.header(r.headers, envelope.H_ITEM_ID),
            )
            for r in records
        }
        return wanted <= have

    return done


def assert_exactly_once_in_order(
    records: list[ConsumerRecord[bytes, bytes]], sim: TicketmaticSim, accounts: Iterable[str]
) -> None:
    """Every item of the sim is in the topic once, as received, and each key's items ascend."""
    by_account: dict[str, list[tuple[str, bytes]]] = collections.defaultdict(list)
    per_partition_key: dict[tuple[int, bytes | None], list[tuple[int, int]]] = (
        collections.defaultdict(list)
    )
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        account = envelope.header(r.headers, envelope.H_ACCOUNT) or ""
        item_id = envelope.header(r.headers, envelope.H_ITEM_ID) or ""
        by_account[account].append((item_id, r.value))
        per_partition_key[(r.partition, r.key)].append(position_key(item_id))
    for account in accounts:
        expected = sim.items(account)
        got = by_account.pop(account, [])
        ids = [i for i, _ in got]
        duplicates = [i for i, n in collections.Counter(ids).items() if n > 1]
        assert not duplicates, f"{account}: written twice: {duplicates[:5]}"
        assert sorted(got, key=lambda x: position_key(x[0])) == expected, f"{account}: items differ"
    assert not by_account, f"records of unexpected accounts {list(by_account)}"
    for (partition, key), keys in per_partition_key.items():
        assert keys == sorted(keys), f"key {key!r} out of order in partition {partition}"


def writers(records: list[ConsumerRecord[bytes, bytes]], account: str) -> list[str]:
    """The poller of each record of ``account``, in item order."""
    mine = [r for r in records if envelope.header(r.headers, envelope.H_ACCOUNT) == account]
    mine.sort(key=lambda r: position_key(envelope.header(r.headers, envelope.H_ITEM_ID) or "0"))
    return [envelope.header(r.headers, H_POLLER) or "" for r in mine]


def runs(sequence: list[str]) -> list[str]:
    """``[a, a, b, b, a]`` -> ``[a, b, a]``: who wrote, block by block."""
    out: list[str] = []
    for value in sequence:
        if not out or out[-1] != value:
            out.append(value)
    return out
