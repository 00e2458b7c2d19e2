"""The receive stage against its peer: HTTP pushes -> Kafka, 202 after the ack.

Both sides get the same load from wrk (C, one thread, ``CONNECTIONS`` kept-alive
connections, ``RUN_S`` seconds after a warm-up) posting Ticketure audit records, one per
push or (bulk) JSON arrays of ``BULK``, to ``/ticketure/events`` with basic credentials;
both write one Kafka record per audit record to a topic of their own on the same broker.
streamproc validates, authenticates and keys each record; the peer (Redpanda Connect's
http_server -> Kafka, tests/bench/peers/connect; receive_bulk.yaml splits the array)
checks nothing. Correct means: no answer but 202, and one record in Kafka for every
record of a push answered 202 (counted on the topic after the run; wrk leaves up to one
push per connection in flight when it stops, written but not counted). The CPU of the
server process per event comes from ``/proc``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import aiohttp

from streamproc import kafka, topics
from streamproc.config import Settings
from streamproc.formats.ticketure import ENCODER
from streamproc.sim.ticketure_flows import Flows
from streamproc.topics import Topics
from tests.localkafka import free_port
from tests.topics import partitions_of

ROOT = Path(__file__).resolve().parents[3]
WRK = Path(os.environ.get("WRK", ROOT / ".cache/wrk/usr/bin/wrk"))
PEER = Path(os.environ.get("CONNECT_PEER", ROOT / ".cache/bin/connect-peer"))
CONFIGS = Path(__file__).resolve().parent / "connect"
CONNECTIONS = 64
WARMUP_S, RUN_S = 3, 10
BODIES = 200
BULK = 20  # records per push in the bulk variant
KEY, SECRET = "bench", "s3cret"


class Result(NamedTuple):
    pushes_per_s: float
    events_per_s: float
    cpu_us_per_event: float
    p99_ms: float
    pushes: int  # answered 202 in the measured run
    records: int  # records in Kafka after both runs (warm-up included)
    answered: int  # 202s of both runs


def _script(folder: Path, per_push: int) -> Path:
    """wrk's Lua script: realistic audit records in turn, one a push (``per_push`` 1) or
    JSON arrays of ``per_push``."""
    flows = Flows(seed=1)
    records = [ENCODER.encode(step[0]).decode() for step in itertools.islice(flows, BODIES)]
    if per_push == 1:
        bodies = records
    else:
        bodies = [
            "[" + ",".join(records[(i + k) % BODIES] for k in range(per_push)) + "]"
            for i in range(BODIES)
        ]
    token = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    listed = ",\n".join(f"[==[{b}]==]" for b in bodies)
    path = folder / "push.lua"
    path.write_text(
        f"""bodies = {{
{listed}
}}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic {token}"
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, "/ticketure/events", nil, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("p99_us %d\\n", latency:percentile(99)))
end
""",
        encoding="utf-8",
    )
    return path


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(port: int, script: Path, seconds: int) -> tuple[int, int, float]:
    """(2xx answers, other answers and errors, p99 ms) of one wrk run."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(WRK.parents[1] / "lib/x86_64-linux-gnu")}
    url = f"http://127.0.0.1:{port}/"
    out = subprocess.run(
        [str(WRK), "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
        check=True,
    ).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = sum(int(n) for n in errors.groups()) if errors else 0
    p99 = int(re.search(r"p99_us (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
    return total - bad, bad + failed, p99


async def _records(settings: Settings, topic: str) -> int:
    """Records in ``topic`` now (high watermarks summed: each side writes only there)."""
    tps = await partitions_of(settings, topic)
    consumer = kafka.consumer(settings.kafka)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def _ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


async def _measure(proc: asyncio.subprocess.Process, port: int, script: Path) -> tuple[int, ...]:
    warm_ok, warm_bad, _ = await asyncio.to_thread(_wrk, port, script, WARMUP_S)
    cpu = _cpu_s(proc.pid)
    ok, bad, p99 = await asyncio.to_thread(_wrk, port, script, RUN_S)
    return ok, bad, warm_ok + ok, warm_bad + bad, int((_cpu_s(proc.pid) - cpu) * 1e6), int(p99)


async def _run(
    settings: Settings,
    command: list[str],
    env: dict[str, str],
    port: int,
    ready: str,
    topic: str,
    per_push: int,
) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        script = _script(Path(tmp), per_push)
        proc = await asyncio.create_subprocess_exec(*command, env=env)
        try:
            await _ready(ready)
            ok, _, answered, all_bad, cpu_us, p99 = await _measure(proc, port, script)
        finally:
            proc.terminate()  # our own child, by its pid
            await proc.wait()
    if all_bad:
        raise RuntimeError(f"{command[0]}: {all_bad} answers were not 202")
    records = await _records(settings, topic)
    # wrk stops with up to CONNECTIONS pushes in flight per run: written, never counted.
    if not answered * per_push <= records <= (answered + 2 * CONNECTIONS) * per_push:
        raise RuntimeError(
            f"{command[0]}: {answered} pushes of {per_push} answered 202, {records} in Kafka"
        )
    events = ok * per_push
    return Result(ok / RUN_S, events / RUN_S, cpu_us / events, p99, ok, records, answered)


async def streamproc_receive(settings: Settings, per_push: int = 1) -> Result:
    """``streamproc receive`` as shipped (one process), on topics of its own."""
    await topics.ensure(settings)
    port, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(
        STREAMPROC_TOPIC_PREFIX=settings.topic_prefix,
        STREAMPROC_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_RECEIVER_HOST="127.0.0.1",
        STREAMPROC_RECEIVER_PORT=str(port),
        STREAMPROC_METRICS_HOST="127.0.0.1",
        STREAMPROC_METRICS_PORT=str(metrics),
        STREAMPROC_RECEIVER_SENDERS=(
            f'[{{"name": "bench", "auth": "basic", "key": "{KEY}", "secret": "{SECRET}"}}]'
        ),
    )
    command = [sys.executable, "-m", "streamproc.cli", "receive"]
    topic = Topics.for_prefix(settings.topic_prefix).ticketure
    ready = f"http://127.0.0.1:{metrics}/readyz"
    return await _run(settings, command, env, port, ready, topic, per_push)


async def connect_receive(settings: Settings, per_push: int = 1) -> Result:
    """The peer: http_server -> Kafka (idempotent, acks=all, LZ4), keyed by a hash of the
    body as streamproc keys by item, on a topic of its own with streamproc's partitions."""
    topic = f"{settings.topic_prefix}peer.receive"
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics(
            [NewTopic(topic, settings.topics.partitions, settings.topics.replication_factor)]
        )
    finally:
        await admin.close()
    port = free_port()
    env = {
        **os.environ,
        "PEER_RECEIVE_ADDRESS": f"127.0.0.1:{port}",
        "PEER_KAFKA_BROKERS": settings.kafka.bootstrap_servers,
        "PEER_TOPIC": topic,
        "PEER_KEY": '${! content().hash("xxhash64") }',
    }
    config = "receive.yaml" if per_push == 1 else "receive_bulk.yaml"
    command = [str(PEER), "-c", str(CONFIGS / config)]
    # http_server answers 405 to a GET on its path: it is up.
    ready = f"http://127.0.0.1:{port}/ticketure/events"
    return await _run(settings, command, env, port, ready, topic, per_push)
