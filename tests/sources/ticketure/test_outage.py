"""Kafka stopped under load: 503s with Retry-After, recovery, and nothing acknowledged lost.

The session broker is shared, so this test starts a broker of its own on a free port and
stops and restarts it (same data folder) while the simulator pushes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from streamproc import topics
from streamproc.config import KafkaSettings, Settings, TopicSettings
from streamproc.formats import envelope
from streamproc.sim.ticketure import TicketureSim
from streamproc.sources.ticketure.receiver import Receiver
from tests import localkafka
from tests.procs import wait_for
from tests.sources.ticketure.conftest import KEY, SECRET, receiver_settings
from tests.topics import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

HEAP = "384m"


class OwnBroker:
    """A broker this test may stop: ``up()``/``down()`` run the blocking calls in a thread."""

    def __init__(self, data: Path) -> None:
        self.port = localkafka.free_port()
        self.data = data

    async def up(self) -> None:
        await asyncio.to_thread(localkafka.up, self.port, self.data, HEAP)

    async def down(self) -> None:
        await asyncio.to_thread(localkafka.down, self.port, self.data)


@pytest_asyncio.fixture(loop_scope="function")
async def broker(tmp_path: Path) -> AsyncIterator[OwnBroker]:
    own = OwnBroker(tmp_path / "kafka")
    await own.up()
    try:
        yield own
    finally:
        await own.down()


async def test_outage_answers_503_then_recovers_and_loses_nothing(broker: OwnBroker) -> None:
    """Every push that got a 202 before, during or after the outage is in Kafka."""
    settings = receiver_settings(
        Settings(
            topic_prefix=f"out{uuid.uuid4().hex[:6]}.",
            kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}"),
            topics=TopicSettings(partitions=3),
        )
    )
    await topics.ensure(settings)
    async with Receiver(
        settings, host="127.0.0.1", port=0, produce_timeout_s=2.0, probe_interval_s=0.2
    ) as rx:
        sim = TicketureSim(
            f"http://127.0.0.1:{rx.port}",
            key=KEY,
            secret=SECRET,
            rate=150,
            concurrency=16,
            max_retries=10_000,  # a patient sender: it keeps its pushes until they are taken
            backoff_base_s=0.05,
            backoff_cap_s=0.5,
            drain_timeout_s=60,
            keep_ids=True,
        )
        load = asyncio.create_task(sim.run())
        try:
            await wait_for(lambda: sim.stats.accepted >= 150, 30, what="150 accepted pushes")
            await broker.down()
            await wait_for(lambda: sim.stats.statuses["503"] >= 20, 30, what="503 answers")
            assert not rx.health.ready()
            assert rx.health.report()["receiver.kafka"]["ready"] is False
            accepted_in_outage = sim.stats.accepted
            await broker.up()
            await wait_for(
                lambda: sim.stats.accepted >= accepted_in_outage + 150, 60, what="recovery"
            )
            await wait_for(rx.health.ready, 10, what="readiness after recovery")
        finally:
            sim.stop()
            stats = await load
    assert stats.failed == stats.rejected == 0
    assert stats.retries >= stats.statuses["503"] >= 20
    records = await read_topic(settings, topics.Topics.for_prefix(settings.topic_prefix).ticketure)
    in_kafka = {envelope.header(r.headers, envelope.H_ITEM_ID) for r in records}
    missing = set(stats.acknowledged) - in_kafka
    assert not missing, f"{len(missing)} acknowledged records are not in Kafka"
    assert len(stats.acknowledged) == stats.records
