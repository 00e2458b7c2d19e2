"""Delivery throughput: one ``streamproc deliver`` process against a bare aiohttp client.

Both post the same prepared batches (one event each, about 700 bytes, as the map stage
writes them) in bulk requests of 100 to one ``streamproc sim mparticle`` process, with
the same number of requests in flight. The bare client reads nothing from Kafka and keeps
no books: it is the ceiling of what this machine and this simulator allow. The simulator
runs without schema validation (which costs it ~2 ms a batch and would make it the bound)
and without a rate limit; the deliverer's client-side limit is raised for the same reason:
mParticle's 270 batches per second is enforced by the limiter, not by slowness.

Rates are taken from the simulator's own clock (first to last batch stored), so process
start-up and the group join are not counted against the deliverer. The two runs alternate:
one pair to warm up (not counted), then ``ROUNDS`` pairs. The share of the ceiling is the
median of each pair's ratio, so that drifts in the speed of a shared VM weigh on both sides
alike. The CPU time that the deliverer and the simulator spend per batch while delivering
(from ``/proc``) is reported too: it tells a slow deliverer from a starved one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import sys
import time
import uuid
from typing import Any, NamedTuple

import aiohttp
import orjson

from streamproc import kafka
from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.topics import Topics
from tests.bench import Row
from tests.localkafka import free_port

BATCHES = 100_000
ROUNDS = 7
PER_REQUEST = 100
API_KEY, API_SECRET = "bench-key", "bench-secret"
NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


def _batch(i: int) -> bytes:
    """A purchase with two tickets, the size of a real mapped batch."""
    return orjson.dumps(
        {
            "source_request_id": str(uuid.uuid5(NAMESPACE, f"req-{i}")),
            "environment": "production",
            "user_identities": {"customer_id": f"ref-{i % 5000}", "other_id_2": str(i % 977)},
            "events": [
                {
                    "event_type": "commerce_event",
                    "data": {
                        "timestamp_unixtime_ms": 1_700_000_000_000 + i,
                        "source_message_id": str(uuid.uuid5(NAMESPACE, f"msg-{i}")),
                        "currency_code": "EUR",
                        "product_action": {
                            "action": "purchase",
                            "transaction_id": f"order-{i}",
                            "total_amount": 59.0,
                            "products": [
                                {
                                    "id": f"ttp-{n}",
                                    "name": "Hamlet, Saturday evening - Adult - Regular",
                                    "category": "Hamlet, Saturday evening",
                                    "variant": "Regular",
                                    "price": 29.5,
                                    "quantity": 1,
                                }
                                for n in range(2)
                            ],
                        },
                    },
                }
            ],
        }
    )


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(
        STREAMPROC_TOPIC_PREFIX=settings.topic_prefix,
        STREAMPROC_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_METRICS_PORT=str(free_port()),
        STREAMPROC_METRICS_HOST="127.0.0.1",
    )
    env.update(extra)
    return env


async def _produce(settings: Settings, values: list[bytes]) -> None:
    topic = Topics.for_prefix(settings.topic_prefix).batches
    producer = kafka.producer(settings.kafka, linger_ms=10, max_batch_size=256 * 1024)
    await producer.start()
    try:
        # Item times as a live stream has them: a new one every ten batches.
        start_ms = int(time.time() * 1000) - len(values) // 10
        futures = [
            await producer.send(
                topic,
                value,
                key=b"ref-%d" % (i % 5000),
                headers=[
                    (envelope.H_SOURCE, b"ticketmatic"),
                    (envelope.H_ITEM_TIME, b"%d" % (start_ms + i // 10)),
                ],
            )
            for i, value in enumerate(values)
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/_sim/stats") as response:
        data: dict[str, Any] = await response.json()
        return data


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_started(http: aiohttp.ClientSession, url: str, timeout_s: float) -> int:
    """Wait until the simulator has stored a batch; return how many it has."""
    deadline = time.monotonic() + timeout_s
    while (stored := int((await _stats(http, url))["batches_stored"])) == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no batch delivered in {timeout_s} s")
        await asyncio.sleep(0.01)
    return stored


async def _wait_stored(http: aiohttp.ClientSession, url: str, n: int, timeout_s: float) -> float:
    """Events per second by the simulator's clock, once ``n`` batches are stored."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await _stats(http, url)
        if stats["batches_stored"] >= n:
            elapsed = float(stats["last_batch_at"]) - float(stats["first_batch_at"])
            return float(stats["events_stored"]) / max(elapsed, 1e-6)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stats['batches_stored']} of {n} batches in {timeout_s} s")
        await asyncio.sleep(0.2)


async def _bare_client(url: str, bodies: list[bytes], in_flight: int) -> None:
    token = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with http.post(url + "/v2/bulkevents", data=body) as response:
                    await response.read()
                    if response.status != 202:
                        raise RuntimeError(f"simulator answered {response.status}")

        await asyncio.gather(*(worker() for _ in range(in_flight)))


async def _reset(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(url + "/_sim/reset") as response:
        response.raise_for_status()


class DeliverRound(NamedTuple):
    rate: float  # events/s by the simulator's clock
    repeats: int  # batches the simulator received twice
    deliver_us: float  # CPU µs per batch of the deliver process
    sim_us: float  # CPU µs per batch of the simulator, meanwhile


async def _deliver_once(
    settings: Settings, http: aiohttp.ClientSession, sim: int, url: str, group: str, in_flight: int
) -> DeliverRound:
    """One ``streamproc deliver`` process over the whole topic."""
    env = _env(
        settings,
        STREAMPROC_MPARTICLE_BASE_URL=url,
        STREAMPROC_MPARTICLE_API_KEY=API_KEY,
        STREAMPROC_MPARTICLE_API_SECRET=API_SECRET,
        STREAMPROC_MPARTICLE_RATE_LIMIT_BATCHES_PER_S="10000000",
        STREAMPROC_MPARTICLE_MAX_IN_FLIGHT=str(in_flight),
    )
    command = [sys.executable, "-m", "streamproc.cli", "deliver", "--group-id", group]
    proc = await asyncio.create_subprocess_exec(*command, env=env)
    try:
        first = await _wait_started(http, url, 120)
        cpu = _cpu_s(proc.pid), _cpu_s(sim)
        rate = await _wait_stored(http, url, BATCHES, 600)
        deliver_s, sim_s = _cpu_s(proc.pid) - cpu[0], _cpu_s(sim) - cpu[1]
        per_batch = 1e6 / (BATCHES - first)
        repeats = int((await _stats(http, url))["duplicates"])
        return DeliverRound(rate, repeats, deliver_s * per_batch, sim_s * per_batch)
    finally:
        proc.terminate()
        await proc.wait()


async def bench(settings: Settings) -> list[Row]:
    """Events/s delivered by one deliver process, and by the bare client (the ceiling).

    The two alternate (each deliver round a fresh consumer group over the same records):
    one pair to warm up, then ``ROUNDS`` pairs whose medians are reported.
    """
    values = [_batch(i) for i in range(BATCHES)]
    await _produce(settings, values)
    bodies = [
        b"[" + b",".join(values[i : i + PER_REQUEST]) + b"]" for i in range(0, BATCHES, PER_REQUEST)
    ]
    in_flight = settings.mparticle.max_in_flight
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sim = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "streamproc.cli", "sim", "mparticle", "--port", str(port)],
        *["--api-key", API_KEY, "--api-secret", API_SECRET, "--no-validate"],
        *["--rate-limit", "0", "--max-stored", "0"],
        env=_env(settings),
        stdout=asyncio.subprocess.PIPE,
    )
    ceilings: list[float] = []
    rounds: list[DeliverRound] = []
    try:
        assert sim.stdout is not None
        await asyncio.wait_for(sim.stdout.readline(), 30)
        async with aiohttp.ClientSession() as http:
            for round_ in range(ROUNDS + 1):  # the first pair warms up
                await _reset(http, url)
                await _bare_client(url, bodies, in_flight)
                ceilings.append(await _wait_stored(http, url, BATCHES, 60))
                await _reset(http, url)
                group = f"{settings.topic_prefix}bench-deliver-{round_}"
                rounds.append(await _deliver_once(settings, http, sim.pid, url, group, in_flight))
    finally:
        if sim.returncode is None:
            sim.terminate()
            await sim.wait()
    repeats = sum(r.repeats for r in rounds)
    ceilings, rounds = ceilings[1:], rounds[1:]
    shares = [100 * r.rate / c for r, c in zip(rounds, ceilings, strict=True)]
    median = statistics.median
    return [
        Row(
            f"deliver: events/s, one process, {in_flight} requests in flight",
            median(r.rate for r in rounds),
            "events/s",
            ">= 20,000",
        ),
        Row("deliver ceiling: bare aiohttp client, same payloads", median(ceilings), "events/s"),
        Row(f"deliver share of the ceiling, median of {ROUNDS}", median(shares), "%", ">= 80"),
        Row("deliver share of the ceiling, lowest pair", min(shares), "%"),
        Row("deliver share of the ceiling, highest pair", max(shares), "%"),
        Row("deliver: CPU per batch, deliver process", median(r.deliver_us for r in rounds), "us"),
        Row("deliver: CPU per batch, simulator meanwhile", median(r.sim_us for r in rounds), "us"),
        Row("deliver: repeats received by the simulator", float(repeats), "batches", "0"),
    ]
