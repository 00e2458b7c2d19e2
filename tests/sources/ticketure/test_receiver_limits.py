"""Slow, silent and idle clients on loopback: closed within the receiver's timeouts while
real pushes go on; the connection cap; the file descriptor budget and accept() failures."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import orjson
import pytest
import pytest_asyncio

from streamproc.config import Settings
from streamproc.sources.ticketure import connections
from streamproc.sources.ticketure.receiver import Receiver
from tests import localkafka
from tests.metrics import sample
from tests.procs import settings_env, wait_for
from tests.sources.ticketure.conftest import receiver_settings
from tests.sources.ticketure.rawhttp import Conn, head
from tests.sources.ticketure.test_receiver import BASIC, post
from tests.sources.ticketure.test_shapes import ticket

pytestmark = pytest.mark.kafka

HEADER_S, BODY_S, KEEPALIVE_S = 1.0, 1.0, 2.0
SLACK_S = 1.5  # timers, a loaded machine


def dropped(reason: str) -> float:
    return sample("streamproc_receiver_connections_dropped_total", reason=reason)


@pytest_asyncio.fixture(loop_scope="function")
async def quick(kafka_settings: Settings) -> AsyncIterator[Receiver]:
    """A receiver whose header, body and keep-alive timeouts are 1, 1 and 2 s."""
    settings = receiver_settings(
        kafka_settings,
        header_timeout_s=HEADER_S,
        body_timeout_s=BODY_S,
        keepalive_timeout_s=KEEPALIVE_S,
    )
    async with Receiver(settings, host="127.0.0.1", port=0, probe_interval_s=0.2) as rx:
        yield rx


async def closed_after(conn: Conn, since: float, limit_s: float) -> float:
    """Seconds from ``since`` until the server closed ``conn`` (inf past ``limit_s``)."""
    if not await conn.closed_within(limit_s - (time.monotonic() - since)):
        return float("inf")
    return time.monotonic() - since


async def test_slow_clients_are_closed_in_time_while_pushes_go_on(quick: Receiver) -> None:
    """100 silent, 100 slowloris, 100 idle kept-alive and 50 slow-body connections: real
    pushes meanwhile get 202s; each bad one is closed within its timeout (header 1 s, body
    1 s with a 408, keep-alive 2 s), counted by reason; none is left open."""
    port = quick.port
    open_before = sample("streamproc_receiver_connections")
    header_before, body_before = dropped("header_timeout"), dropped("body_timeout")
    started = time.monotonic()
    silent = [await Conn.open(port) for _ in range(100)]
    slowloris = [await Conn.open(port) for _ in range(100)]
    for conn in slowloris:
        await conn.send(b"POST /ticketure/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    idle = [await Conn.open(port) for _ in range(100)]
    for conn in idle:  # one request answered (401), then nothing more
        await conn.send(head("/ticketure/events", {}, 0))
        assert (await conn.answer())[0] == 401
    idle_since = time.monotonic()
    body = orjson.dumps(ticket())
    slow_bodies = [await Conn.open(port) for _ in range(50)]
    for conn in slow_bodies:  # announces more than it sends
        await conn.send(head("/ticketure/events", BASIC, len(body) + 100) + body)
    body_since = time.monotonic()

    async def dribble() -> None:
        while True:
            await asyncio.sleep(0.3)
            for conn in slowloris:
                if not conn.writer.is_closing():
                    conn.writer.write(b"a")

    dribbler = asyncio.create_task(dribble())
    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for i in range(20):
                push = orjson.dumps(ticket(event_id=f"real-{i}"))
                statuses.append((await post(http, quick, "/ticketure/events", push, BASIC))[0])
                await asyncio.sleep(0.05)
        assert statuses == [202] * 20
        answers = await asyncio.gather(*(c.answer(BODY_S + SLACK_S) for c in slow_bodies))
        assert {status for status, _, _ in answers} == {408}
        assert {h["connection"] for _, h, _ in answers} == {"close"}
        closed = await asyncio.gather(
            *(closed_after(c, started, HEADER_S + SLACK_S + 1) for c in silent + slowloris),
            *(closed_after(c, idle_since, KEEPALIVE_S + SLACK_S) for c in idle),
            *(closed_after(c, body_since, BODY_S + 1 + SLACK_S) for c in slow_bodies),
        )
    finally:
        dribbler.cancel()
        for conn in silent + slowloris + idle + slow_bodies:
            conn.close()
    assert max(closed) < float("inf"), f"{closed.count(float('inf'))} connections left open"
    assert dropped("header_timeout") == header_before + 200
    assert dropped("body_timeout") == body_before + 50
    await wait_for(lambda: sample("streamproc_receiver_connections") <= open_before, 5)


async def test_past_max_connections_a_new_one_replaces_an_idle_or_slow_one_else_503(
    kafka_settings: Settings,
) -> None:
    """With 5 connections open: a sixth replaces the longest idle one, else the one waiting
    longest for its head, and its push is taken; when all 5 are busy (bodies coming
    slowly) it is answered 503 with Retry-After and closed."""
    settings = receiver_settings(kafka_settings, max_connections=5, body_timeout_s=BODY_S)
    before = {r: dropped(r) for r in ("over_capacity", "idle_evicted", "head_evicted")}
    body = orjson.dumps(ticket())
    request = head("/ticketure/events", BASIC, len(body)) + body

    async def newcomer_taken() -> bool:
        conn = await Conn.open(rx.port)
        try:
            await conn.send(request)
            return (await conn.answer())[0] == 202
        finally:
            conn.close()

    async with Receiver(settings, host="127.0.0.1", port=0) as rx:
        idle = [await Conn.open(rx.port) for _ in range(5)]
        for conn in idle:
            await conn.send(request)
            assert (await conn.answer())[0] == 202
        assert await newcomer_taken()
        assert await idle[0].closed_within(2)  # the longest idle made room
        silent = [await Conn.open(rx.port) for _ in range(5)]
        await asyncio.sleep(0.2)  # the other idle ones made room for these
        assert await newcomer_taken()
        assert await silent[0].closed_within(2)  # the one waiting longest for a head
        busy = [await Conn.open(rx.port) for _ in range(5)]
        for conn in busy:  # a head, then the body never comes
            await conn.send(head("/ticketure/events", BASIC, len(body)) + body[:5])
        await asyncio.sleep(0.2)
        refused = await Conn.open(rx.port)
        status, headers, answer = await refused.answer(timeout_s=2)
        assert (status, headers["retry-after"]) == (503, "1")
        assert orjson.loads(answer)["errors"][0]["code"] == "SERVICE_UNAVAILABLE"
        assert await refused.closed_within(2)
        for conn in busy:  # answered 408 once the body timeout is over: room again
            assert (await conn.answer(BODY_S + SLACK_S))[0] == 408
        assert await newcomer_taken()
        for conn in [*idle, *silent, *busy, refused]:
            conn.close()
    assert dropped("idle_evicted") >= before["idle_evicted"] + 5
    assert dropped("head_evicted") >= before["head_evicted"] + 1
    assert dropped("over_capacity") == before["over_capacity"] + 1


async def test_past_max_connections_a_slow_head_goes_before_an_idle_client(
    kafka_settings: Settings,
) -> None:
    """Full with idle kept-alive clients and connections silent for over HEAD_GRACE_S: a
    newcomer replaces a silent one, and the idle clients push again on their connections
    (evicting them first would make each reconnect evict another)."""
    settings = receiver_settings(kafka_settings, max_connections=6)
    before = dropped("head_evicted")
    body = orjson.dumps(ticket())
    request = head("/ticketure/events", BASIC, len(body)) + body
    async with Receiver(settings, host="127.0.0.1", port=0) as rx:
        idle = [await Conn.open(rx.port) for _ in range(3)]
        for conn in idle:
            await conn.send(request)
            assert (await conn.answer())[0] == 202
        silent = [await Conn.open(rx.port) for _ in range(3)]
        await asyncio.sleep(connections.HEAD_GRACE_S + 0.2)
        newcomers = [await Conn.open(rx.port) for _ in range(3)]  # kept open: each one
        for newcomer in newcomers:  # needs the room of another
            await newcomer.send(request)
            assert (await newcomer.answer())[0] == 202
        for conn in silent:
            assert await conn.closed_within(2)
        for conn in idle:  # never evicted: their next push is taken on the same connection
            await conn.send(request)
            assert (await conn.answer())[0] == 202
        for conn in [*idle, *newcomers, *silent]:
            conn.close()
    assert dropped("head_evicted") == before + 3


async def test_readyz_says_not_ready_when_open_files_near_the_limit(
    rx_settings: Settings,
) -> None:
    """Past max_fd_ratio of RLIMIT_NOFILE the receiver is not ready, naming the numbers."""
    crowded = msgspec.structs.replace(rx_settings.receiver, max_fd_ratio=1e-9)
    settings = msgspec.structs.replace(rx_settings, receiver=crowded)
    async with Receiver(settings, host="127.0.0.1", port=0) as rx:
        assert not rx.health.ready()
        reason = rx.health.report()["receiver.files"]["reason"]
        assert "file descriptors open (RLIMIT_NOFILE)" in str(reason)
    async with Receiver(rx_settings, host="127.0.0.1", port=0) as rx:
        assert rx.health.ready()


async def ready(port: int) -> bool:
    """Whether /readyz answers 200 within 1 s, as a probe wants it (out of files, the
    receiver may not even accept the probe)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@pytest.mark.slow
async def test_out_of_files_accept_errors_are_logged_once_per_burst(
    rx_settings: Settings, tmp_path: Path
) -> None:
    """`streamproc receive` under a 160-file limit, 400 connections at once that each start
    a request and leave its body unsent: the cap (lowered to 96 by the limit) is full of
    busy connections, refusals take the rest of the files, /readyz stops answering 200,
    accept() failures are logged once for the burst (no traceback); once the connections
    are gone it is ready again and takes pushes."""
    port, metrics_port = localkafka.free_port(), localkafka.free_port()
    receiver = msgspec.structs.replace(
        rx_settings.receiver, host="127.0.0.1", port=port, body_timeout_s=3.0
    )
    settings = msgspec.structs.replace(
        rx_settings, metrics_host="127.0.0.1", metrics_port=metrics_port, receiver=receiver
    )
    log = tmp_path / "receive.log"
    command = f"ulimit -Sn 160 && exec {sys.executable} -m streamproc.cli receive"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    conns: list[Conn] = []
    try:
        await wait_for(lambda: ready(metrics_port), 60, what="/readyz")
        body = orjson.dumps(ticket())
        started = head("/ticketure/events", BASIC, len(body)) + body[:5]
        readiness: list[bool] = []

        async def probe() -> None:  # out of files only while the refusals linger
            while True:
                readiness.append(await ready(metrics_port))
                await asyncio.sleep(0.1)

        prober = asyncio.create_task(probe())

        async def open_and_start() -> Conn | None:
            try:
                conn = await asyncio.wait_for(Conn.open(port), 5)
            except (OSError, TimeoutError):
                return None  # the kernel refused it: the receiver is out of files, as intended
            with contextlib.suppress(OSError):  # refused already
                await conn.send(started)
            return conn

        # All at once, as a burst comes: one after the other, on a machine slow that moment,
        # the first refusals may already be closed (after their linger) before the last
        # connections arrive, and the files never run out.
        opened = await asyncio.gather(*(open_and_start() for _ in range(400)))
        conns += [conn for conn in opened if conn is not None]
        await asyncio.sleep(2.5)  # a probe stuck in the backlog has timed out by then
        prober.cancel()
        assert False in readiness, readiness
        for conn in conns:
            conn.close()
        await wait_for(lambda: ready(metrics_port), 30, what="/readyz 200 again")

        async def taken() -> bool:
            # Out of files, the producer may have lost its broker connection: a 503 until
            # it has reconnected, which a sender retries.
            body = orjson.dumps(ticket(event_id="after-the-burst"))
            url = f"http://127.0.0.1:{port}/ticketure/events"
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, data=body, headers=BASIC) as r,
            ):
                return r.status == 202

        await wait_for(taken, 15, what="a push taken after the burst")
        await wait_for(lambda: "accept() works again" in log.read_text(), 15, what="recovery")
    finally:
        for conn in conns:
            conn.close()
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
    output = log.read_text()
    assert output.count("accept() fails") == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "taking at most 96 connections" in output
