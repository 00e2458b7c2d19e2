"""The Strimzi overlay's ACLs, enforced by a broker: each role runs as its own user.

A broker of this module's own has Kafka's StandardAuthorizer on its SASL_SSL listener and
one SCRAM user per role; the ACLs of deploy/strimzi/kafkausers.yaml are applied to it with
Kafka's own kafka-acls (AclCommand), and the roles run over that listener as those users:
the receiver takes a push, the map stage maps an item, delivery delivers it, the poller
polls an account. A role whose
user lacks the right is refused (the receiver as the deliver user answers 503, not 202).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
import yaml

from streamproc.config import KafkaSettings, Settings, TopicSettings
from streamproc.mapper.processor import MapProcessor
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.ticketmatic import TicketmaticSim
from streamproc.sinks.mparticle.deliverer import Deliverer
from streamproc.topics import Topics, ensure
from tests import localkafka
from tests.mapper.test_processor import produce_tm, tm_item
from tests.procs import wait_for
from tests.sinks.support import API_KEY, API_SECRET, deliver_settings
from tests.sources.ticketmatic.support import tm_settings
from tests.sources.ticketmatic.test_poller import ACME, run_service
from tests.sources.ticketure.conftest import receiver_settings
from tests.test_kafka_security import over_tls, push
from tests.topics import TopicReader, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

USERS = Path(__file__).resolve().parents[1] / "deploy" / "strimzi" / "kafkausers.yaml"
PREFIX = "prod."  # the names the ACLs are written for (streamproc.env's prefix)
OPTION = {"topic": "--topic", "group": "--group", "transactionalId": "--transactional-id"}


def acl_arguments(user: dict[str, Any]) -> Iterator[list[str]]:
    """kafka-acls arguments for each ACL of a Strimzi KafkaUser."""
    principal = f"User:{user['metadata']['name']}"
    for rule in user["spec"]["authorization"]["acls"]:
        resource = rule["resource"]
        pattern = "prefixed" if resource["patternType"] == "prefix" else "literal"
        operations = [arg for op in rule["operations"] for arg in ("--operation", op)]
        yield [
            "--add",
            "--allow-principal",
            principal,
            OPTION[resource["type"]],
            resource["name"],
            "--resource-pattern-type",
            pattern,
            *operations,
        ]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, localkafka.Secure]]:
    users = [u for u in yaml.safe_load_all(USERS.read_text(encoding="utf-8")) if u]
    port, secure_port = localkafka.free_port(), localkafka.free_port()
    data = tmp_path_factory.mktemp("kafka-acl")
    names = [u["metadata"]["name"] for u in users]
    localkafka.up(port, data, secure_port=secure_port, users=names, authorizer=True)
    try:
        for user in users:
            for args in acl_arguments(user):
                localkafka.acls(f"127.0.0.1:{port}", args)
        secure = localkafka.secure_of(data)
        assert secure is not None
        yield f"127.0.0.1:{port}", secure
    finally:
        localkafka.down(port, data)


def as_user(settings: Settings, secure: localkafka.Secure, role: str) -> Settings:
    return over_tls(settings, secure, user=f"streamproc-{role}")


@pytest_asyncio.fixture(loop_scope="function")
async def admin_settings(broker: tuple[str, localkafka.Secure]) -> AsyncIterator[Settings]:
    """The super user's settings (PLAINTEXT) on the module's broker, topics ensured."""
    settings = Settings(
        topic_prefix=PREFIX,
        kafka=KafkaSettings(bootstrap_servers=broker[0], client_id="acl-test"),
        topics=TopicSettings(partitions=3, replication_factor=1),
    )
    await ensure(settings)
    yield settings


async def test_each_role_does_its_work_as_its_own_user(
    admin_settings: Settings, broker: tuple[str, localkafka.Secure]
) -> None:
    secure = broker[1]
    names = Topics.for_prefix(PREFIX)
    # receive: a push written to ticketure.audit
    assert await push(receiver_settings(as_user(admin_settings, secure, "receive"))) == 202
    assert len(await read_topic(admin_settings, names.ticketure)) == 1
    # map: both sources read, the batch (or its dead letter) written in a transaction
    now = int(time.time() * 1000)
    await produce_tm(admin_settings, [tm_item(0, "visitor-0", now)])
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
        mp = deliver_settings(admin_settings, sim)
        processor = MapProcessor(as_user(admin_settings, secure, "map"))
        stop = asyncio.Event()
        async with processor:
            task = asyncio.create_task(processor.work(stop))
            await wait_for(lambda: processor.committed >= 2, 60, what="map to commit both")
            stop.set()
            await task
        # deliver: the batches read, delivered, the offsets committed in its group
        deliverer = Deliverer(
            as_user(msgspec.structs.replace(mp, topic_prefix=PREFIX), secure, "deliver")
        )
        async with deliverer:
            await wait_for(lambda: sim.stats.batches_stored >= 1, 60, what="a delivered batch")


async def test_a_user_without_the_right_is_refused(
    admin_settings: Settings, broker: tuple[str, localkafka.Secure]
) -> None:
    """The deliver user may not write ticketure.audit: the receiver cannot take the push."""
    settings = receiver_settings(as_user(admin_settings, broker[1], "deliver"))
    assert await push(settings) == 503


async def test_the_poller_polls_as_its_own_user(
    admin_settings: Settings, broker: tuple[str, localkafka.Secure]
) -> None:
    """poll: joins its group, writes items and cursors in transactions of its own ids."""
    names = Topics.for_prefix(PREFIX)
    before = len(await read_topic(admin_settings, names.ticketmatic))
    sim = TicketmaticSim([ACME], page_size=20, seed=3)
    async with sim:
        sim.generate("acme", 30, span_s=60)

        def on_this_broker(**fields: Any) -> Settings:
            fields.pop("partitions")
            return msgspec.structs.replace(admin_settings, **fields)

        settings = as_user(tm_settings(on_this_broker, sim, [ACME]), broker[1], "poll")
        stop = asyncio.Event()
        task = await run_service(settings, stop)
        try:
            async with TopicReader(admin_settings, names.ticketmatic) as reader:
                await reader.until(lambda records: len(records) >= before + 30, 60)
        finally:
            stop.set()
            await task
