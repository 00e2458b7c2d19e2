"""Kafka over TLS and SASL SCRAM-SHA-512, for real: the session broker's SASL_SSL listener.

The local broker (tests/localkafka.py) has a second listener whose certificate a CA of its
own signed (keytool) and one SCRAM user. `topics ensure`, the receiver and the map stage
run over it; a wrong password gives a one-line error naming authentication and a
readiness reason that says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from streamproc.config import Secret, Settings
from streamproc.sources.ticketure.receiver import Receiver
from streamproc.topics import Topics, ensure
from tests.localkafka import Secure, free_port
from tests.procs import Proc, settings_env, wait_for
from tests.sources.ticketure.conftest import receiver_settings
from tests.sources.ticketure.test_receiver import BASIC
from tests.sources.ticketure.test_shapes import ticket
from tests.test_dlq import cli
from tests.test_startup import ready_gauge, readyz
from tests.topics import read_topic

pytestmark = pytest.mark.kafka


def over_tls(
    settings: Settings, secure: Secure, password: str | None = None, *, user: str | None = None
) -> Settings:
    """``settings`` on the SASL_SSL listener, as a user of a secured cluster configures it:
    as the broker's main user, or as ``user`` (one of ``secure.users``)."""
    if password is None:
        password = secure.password if user is None else secure.users[user]
    kafka = msgspec.structs.replace(
        settings.kafka,
        bootstrap_servers=f"127.0.0.1:{secure.port}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=secure.username if user is None else user,
        sasl_password=Secret(password),
        ssl_cafile=str(secure.cafile),
        request_timeout_ms=5000,
    )
    return msgspec.structs.replace(settings, kafka=kafka)


def test_topics_ensure_over_tls_and_scram(
    make_settings: Callable[..., Settings], secure_kafka: Secure
) -> None:
    settings = over_tls(make_settings(), secure_kafka)
    result = cli(settings, "topics", "ensure")
    assert result.returncode == 0, result.stderr[-2000:]
    names = Topics.for_prefix(settings.topic_prefix)
    assert f"created {names.ticketmatic} (3 partitions)" in result.stdout + result.stderr


def test_a_wrong_password_is_one_line_naming_authentication(
    make_settings: Callable[..., Settings], secure_kafka: Secure
) -> None:
    settings = over_tls(make_settings(), secure_kafka, password="not-the-password")
    result = cli(settings, "topics", "ensure")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"streamproc: Kafka at 127.0.0.1:{secure_kafka.port}: ")
    assert "authentication failed" in last
    assert "SCRAM-SHA-512" in last
    assert "not-the-password" not in result.stderr


async def push(settings: Settings) -> int:
    """One push to a receiver run on ``settings``: the status it answers."""
    async with (
        Receiver(settings, host="127.0.0.1", port=0, probe_interval_s=0.2) as rx,
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{rx.port}/ticketure/events", json=ticket(), headers=BASIC
        ) as answer,
    ):
        return answer.status


async def test_the_receiver_writes_over_tls_and_scram(
    make_settings: Callable[..., Settings], secure_kafka: Secure
) -> None:
    """A push accepted by a receiver whose Kafka is the SASL_SSL listener is in the topic."""
    settings = receiver_settings(over_tls(make_settings(), secure_kafka))
    await ensure(settings)
    assert await push(settings) == 202
    (record,) = await read_topic(settings, Topics.for_prefix(settings.topic_prefix).ticketure)
    assert b'"ticket_audit"' in record.value


@pytest.mark.slow
async def test_a_role_with_a_wrong_password_is_not_ready_and_says_why(
    make_settings: Callable[..., Settings], secure_kafka: Secure, tmp_path: Path
) -> None:
    """`streamproc map` refused by SCRAM stays up, not ready (/readyz and streamproc_ready),
    the reason naming it."""
    settings = over_tls(
        make_settings(metrics_host="127.0.0.1", metrics_port=free_port()),
        secure_kafka,
        password="not-the-password",
    )
    proc = Proc(["map"], settings_env(settings), tmp_path / "map.log")
    try:

        async def refused() -> bool:
            body = await readyz(settings.metrics_port)
            reason = body["components"].get("kafka", {}).get("reason", "")
            return bool(body["status"] == 503 and "authentication failed" in reason)

        await wait_for(refused, timeout_s=60, what="/readyz naming the authentication failure")
        assert (await ready_gauge(settings.metrics_port))["kafka"] == 0  # StreamprocNotReady
        await asyncio.sleep(1)
        assert proc.alive(), proc.output()[-2000:]
    finally:
        proc.terminate()
    assert "not-the-password" not in proc.output()
