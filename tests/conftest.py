"""Shared fixtures: one real Kafka broker per test session, and per-test topics and groups.

The broker is the same Apache Kafka (KRaft, single node) that ``make kafka-up`` runs,
started on a free port with its data in a temporary folder, unless
``STREAMPROC_KAFKA_BOOTSTRAP_SERVERS`` names one to use instead. Each test gets its own
topic prefix and group ids, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamproc import topics
from streamproc.config import KafkaSettings, Settings, TopicSettings
from tests import localkafka
from tests.promtool import Promtool, find_promtool

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path | None]]:
    """bootstrap.servers of the session's broker, and its data folder if started here."""
    given = os.environ.get("STREAMPROC_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given, None
        return
    port = localkafka.free_port()
    data = tmp_path_factory.mktemp("kafka")
    localkafka.up(port, data, secure_port=localkafka.free_port())
    try:
        yield f"127.0.0.1:{port}", data
    finally:
        localkafka.down(port, data)


@pytest.fixture(scope="session")
def secure_kafka(local_broker: tuple[str, Path | None]) -> localkafka.Secure:
    """The session broker's SASL_SSL listener (SCRAM-SHA-512, a CA of its own)."""
    data = local_broker[1]
    secure = None if data is None else localkafka.secure_of(data)
    if secure is None:
        pytest.skip(
            "STREAMPROC_KAFKA_BOOTSTRAP_SERVERS names a broker without our SASL_SSL listener"
        )
    return secure


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: tuple[str, Path | None]) -> str:
    """bootstrap.servers of the session's broker (started here unless given)."""
    return local_broker[0]


@pytest.fixture
def kafka_log_dirs(local_broker: tuple[str, Path | None]) -> Path:
    """The broker's log directories (one folder per partition); skips for a given broker."""
    data = local_broker[1]
    if data is None:
        pytest.skip("STREAMPROC_KAFKA_BOOTSTRAP_SERVERS names a broker whose disk is not ours")
    return data / "logs"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """A factory of names unique to this test (for group ids, transactional ids...)."""
    token = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{token}"


@pytest.fixture
def make_settings(kafka_bootstrap: str) -> Callable[..., Settings]:
    """Settings on the session broker with a topic prefix of this test's own."""
    prefix = f"t{uuid.uuid4().hex[:10]}."

    def make(partitions: int = 3, **fields: object) -> Settings:
        return Settings(
            topic_prefix=prefix,
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, client_id="streamproc-test"),
            topics=TopicSettings(partitions=partitions),
            **fields,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
async def kafka_settings(make_settings: Callable[..., Settings]) -> Settings:
    """Settings whose topics exist on the session broker (3 partitions each)."""
    settings = make_settings()
    await topics.ensure(settings)
    return settings


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """../shared/reference beside the repository; tests that need it skip without it."""
    ref = SHARED / "reference"
    if not ref.is_dir():
        pytest.skip(f"{ref} is absent: the reference material lives beside the repository")
    return ref


@pytest.fixture(scope="session")
def promtool() -> Promtool:
    """Prometheus' promtool; skips without one, or fails where PROMTOOL_REQUIRED is set."""
    path = find_promtool()
    if path is None:
        why = (
            "promtool is not installed: `make promtool` unpacks it into .cache/prometheus "
            "(make test does that itself), or set PROMTOOL to one"
        )
        if os.environ.get("PROMTOOL_REQUIRED"):
            pytest.fail(f"{why}; PROMTOOL_REQUIRED is set, so this is a failure")
        pytest.skip(why)
    return Promtool(path)
