"""A role started while Kafka is away waits for it (not ready, alive) instead of crashing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamproc.config import Settings
from streamproc.topics import ensure
from tests.localkafka import free_port
from tests.procs import Proc, settings_env, wait_for

pytestmark = pytest.mark.kafka


class Forwarder:
    """A TCP port that refuses connections until ``open()``, then forwards to ``target``.

    Kafka clients bootstrap through it; the broker's metadata then names its own address,
    so only the first connection goes through here.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def readyz(port: int) -> dict[str, Any]:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as r,
        ):
            body: dict[str, Any] = await r.json()
            body["status"] = r.status
            return body
    except (aiohttp.ClientError, TimeoutError):
        return {"status": None, "components": {}}


async def ready_gauge(port: int) -> dict[str, float]:
    """streamproc_ready by component, as a scrape of the process's /metrics shows it."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        text = await r.text()
    return {
        sample.labels["component"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "streamproc_ready"
        for sample in family.samples
    }


def pointed_at(settings: Settings, port: int, **kafka: Any) -> Settings:
    return msgspec.structs.replace(
        settings,
        kafka=msgspec.structs.replace(
            settings.kafka, bootstrap_servers=f"127.0.0.1:{port}", **kafka
        ),
    )


def role_env() -> dict[str, dict[str, str]]:
    """What each role needs configured beside Kafka to start (its peers need not answer)."""
    account = '[{"name": "acme", "access_key": "AK", "secret_key": "SK", "currency": "EUR"}]'
    return {
        "map": {},
        "deliver": {"STREAMPROC_MPARTICLE_API_KEY": "k", "STREAMPROC_MPARTICLE_API_SECRET": "s"},
        "poll": {
            "STREAMPROC_TICKETMATIC_ACCOUNTS": account,
            "STREAMPROC_TICKETMATIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
        },
        "receive": {
            "STREAMPROC_RECEIVER_SENDERS": '[{"name": "t", "key": "k", "secret": "s"}]',
            "STREAMPROC_RECEIVER_HOST": "127.0.0.1",
            "STREAMPROC_RECEIVER_PORT": str(free_port()),
        },
    }


@pytest.mark.parametrize("role", ["map", "deliver", "poll", "receive"])
async def test_a_role_waits_for_kafka_then_runs(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, tmp_path: Path, role: str
) -> None:
    """Broker away: /readyz 503 naming Kafka, the process stays up; it starts once Kafka is."""
    settings = make_settings(metrics_host="127.0.0.1", metrics_port=free_port())
    await ensure(settings)
    forwarder = Forwarder(int(kafka_bootstrap.rsplit(":", 1)[1]))
    away = pointed_at(settings, forwarder.port, request_timeout_ms=2000)
    proc = Proc([role], settings_env(away, **role_env()[role]), tmp_path / f"{role}.log")
    try:
        await wait_for(
            lambda: _waiting(readyz(settings.metrics_port)), timeout_s=30, what="readyz names Kafka"
        )
        await asyncio.sleep(3)
        assert proc.alive(), proc.output()[-2000:]
        await forwarder.open()
        await wait_for(
            lambda: _running(readyz(settings.metrics_port), role),
            timeout_s=60,
            what=f"{role} ready, the kafka component gone from readyz",
        )
        assert proc.alive(), proc.output()[-2000:]
        # In a thread: the forwarder lives in this event loop and must keep serving.
        assert await asyncio.to_thread(proc.terminate) == 0, proc.output()[-2000:]
    finally:
        if proc.alive():
            proc.kill()
        await forwarder.close()
    assert proc.output().count("waiting for Kafka at") == 1  # logged once, not per attempt


async def _waiting(ready: Any) -> bool:
    body = await ready
    reason = body["components"].get("kafka", {}).get("reason", "")
    return bool(body["status"] == 503 and "waiting for Kafka at" in reason)


async def _running(ready: Any, role: str) -> bool:
    body = await ready
    if body["status"] is None or "kafka" in body["components"]:
        return False
    if role == "poll":  # its Ticketmatic does not answer: the group is what Kafka gates
        return bool(body["components"].get("poll-group", {}).get("ready"))
    return bool(body["status"] == 200)


async def test_startup_timeout_exits_1_naming_the_setting(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Nobody listening for longer than kafka.startup_timeout_s: exit 1, reason named."""
    settings = make_settings(metrics_host="127.0.0.1", metrics_port=free_port())
    away = pointed_at(settings, free_port(), request_timeout_ms=1000, startup_timeout_s=2.0)
    proc = Proc(["map"], settings_env(away), tmp_path / "map.log")
    try:
        await wait_for(lambda: not proc.alive(), timeout_s=30, what="map to give up")
    finally:
        code = proc.terminate()
    assert code == 1
    assert "kafka.startup_timeout_s" in proc.output()
    assert "Traceback" not in proc.output()


async def test_sigterm_while_waiting_exits_0(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """SIGTERM while waiting for Kafka stops the process at once, exit 0."""
    settings = make_settings(metrics_host="127.0.0.1", metrics_port=free_port())
    away = pointed_at(settings, free_port(), request_timeout_ms=1000)
    proc = Proc(
        ["deliver"],
        settings_env(away, STREAMPROC_MPARTICLE_API_KEY="k", STREAMPROC_MPARTICLE_API_SECRET="s"),
        tmp_path / "d.log",
    )
    try:
        await wait_for(
            lambda: _waiting(readyz(settings.metrics_port)), timeout_s=30, what="readyz names Kafka"
        )
        assert proc.terminate(timeout_s=10) == 0, proc.output()[-2000:]
    finally:
        if proc.alive():
            proc.kill()


async def test_a_role_waits_for_the_topics_then_exits_2_naming_them(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Topics not ensured yet (the topics Job still running): the role stays up, /readyz 503
    naming the missing topics and what to run; past kafka.startup_timeout_s, exit 2."""
    settings = make_settings(metrics_host="127.0.0.1", metrics_port=free_port())
    env = settings_env(settings, **role_env()["poll"], STREAMPROC_KAFKA_STARTUP_TIMEOUT_S="6")
    proc = Proc(["poll"], env, tmp_path / "poll.log")
    cursors = f"{settings.topic_prefix}ticketmatic.cursors"

    async def waiting() -> bool:
        body = await readyz(settings.metrics_port)
        reason = body["components"].get("topics", {}).get("reason", "")
        return bool(body["status"] == 503 and cursors in reason and "topics ensure" in reason)

    try:
        await wait_for(waiting, timeout_s=30, what="/readyz naming the missing topics")
        assert (await ready_gauge(settings.metrics_port))["topics"] == 0
        assert proc.alive()
        code = await asyncio.to_thread(proc.popen.wait, 60)
    finally:
        proc.kill()
    assert code == 2
    logged = proc.output()
    assert cursors in logged.splitlines()[-1]
    assert "streamproc topics ensure" in logged
    assert "Traceback" not in logged


async def test_a_role_started_before_its_topics_runs_once_they_exist(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The topics Job finishing after the role started: the role goes on by itself."""
    settings = make_settings(metrics_host="127.0.0.1", metrics_port=free_port())
    proc = Proc(["map"], settings_env(settings), tmp_path / "map.log")
    try:
        await wait_for(
            lambda: _topics_missing(readyz(settings.metrics_port)), 30, what="waiting for topics"
        )
        await ensure(settings)
        await wait_for(lambda: _running(readyz(settings.metrics_port), "map"), 60, what="map")
        assert proc.alive()
    finally:
        code = proc.terminate()
    assert code == 0, proc.output()[-2000:]


async def _topics_missing(ready: Any) -> bool:
    body = await ready
    return "topics" in body["components"]
