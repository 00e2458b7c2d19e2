"""The Ticketure receiver's pace: acknowledged pushes per second and latency, one process.

The receiver runs as ``streamproc receive`` in a process of its own against the
benchmark's broker; this process pushes single audit records over kept-alive HTTP/1.1
connections with a minimal client (so the client's cost stays small next to the
receiver's). Two runs: at saturation (``SATURATION_CONNECTIONS`` connections pushing back
to back) and open-loop at a fixed 1000 pushes per second, whose latency is measured from
each push's scheduled time (a late push counts its wait). Every 202 waits for Kafka.
A third run pushes at ``SLOW_RATE`` while ``SLOW_CLIENTS`` hostile connections are held
open (silent ones, slowloris ones sending a header byte a second, idle kept-alive ones,
twice ``receiver.max_connections`` in all): the normal client's latency, the pushes it
lost and the receiver process's resident memory show what they cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import multiprocessing
import secrets

import aiohttp
import msgspec

from streamproc.config import PushSender, ReceiverSettings, Secret, Settings
from streamproc.formats.ticketure import ENCODER
from streamproc.sim.credentials import basic
from streamproc.sim.ticketure_flows import Flows
from streamproc.sources.ticketure.command import command
from streamproc.sources.ticketure.receiver import ROUTE_EVENTS
from tests import localkafka
from tests.bench import Row

WARMUP_S = 2.0
RUN_S = 10.0
SATURATION_CONNECTIONS = 64
FIXED_RATE = 1000.0
FIXED_CONNECTIONS = 128
BODIES = 2000
SLOW_RATE = 200.0
SLOW_CONNECTIONS = 16
# (silent, slowloris, idle kept-alive) connections held during the third run.
SLOW_CLIENTS = (1000, 500, 500)


def _serve(settings: Settings) -> None:
    """The receiver process: ``streamproc receive`` itself, until SIGTERM."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(command(settings, argparse.Namespace(host=None, port=None)))


async def _wait_ready(metrics_port: int, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{metrics_port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError("the receiver process did not become ready")


def _requests(key: str, secret: str) -> list[bytes]:
    """Raw HTTP requests, each one realistic audit record."""
    flows = Flows(seed=1)
    head = (
        f"POST {ROUTE_EVENTS} HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: {basic(key, secret)}\r\nContent-Type: application/json\r\n"
    )
    out = []
    for step in itertools.islice(flows, BODIES):
        body = ENCODER.encode(step[0])
        out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


class Client:
    """One kept-alive connection; ``push`` returns the status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def push(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return int(head[9:12])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _saturate(port: int, requests: list[bytes]) -> tuple[float, list[float]]:
    """Acknowledged pushes per second and latencies (s) with every connection busy."""
    clients = [await Client.open(port) for _ in range(SATURATION_CONNECTIONS)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, end = start + WARMUP_S, start + WARMUP_S + RUN_S
    latencies: list[float] = []
    accepted = 0

    async def worker(client: Client, offset: int) -> None:
        nonlocal accepted
        for i in itertools.count(offset, SATURATION_CONNECTIONS):
            sent = loop.time()
            if sent >= end:
                return
            status = await client.push(requests[i % len(requests)])
            if sent >= measure_from and status == 202:
                accepted += 1
                latencies.append(loop.time() - sent)

    try:
        await asyncio.gather(*(worker(c, n) for n, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    return accepted / RUN_S, latencies


async def _fixed_rate(port: int, requests: list[bytes]) -> tuple[float, list[float]]:
    """Pushes scheduled at FIXED_RATE; latency from each push's scheduled time."""
    clients = [await Client.open(port) for _ in range(FIXED_CONNECTIONS)]
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    accepted = 0
    start = loop.time() + 0.1
    measure_from = start + WARMUP_S
    total = int((WARMUP_S + RUN_S) * FIXED_RATE)

    async def worker(client: Client) -> None:
        nonlocal accepted
        while (item := await due.get()) is not None:
            i, scheduled = item
            status = await client.push(requests[i % len(requests)])
            if scheduled >= measure_from and status == 202:
                accepted += 1
                latencies.append(loop.time() - scheduled)

    workers = [asyncio.create_task(worker(c)) for c in clients]
    try:
        for i in range(total):
            scheduled = start + i / FIXED_RATE
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            due.put_nowait((i, scheduled))
        for _ in workers:
            due.put_nowait(None)
        await asyncio.gather(*workers)
    finally:
        for client in clients:
            await client.close()
    return accepted / RUN_S, latencies


def _rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (Linux /proc), in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _hold_slow_clients(port: int, request: bytes, stop: asyncio.Event) -> int:
    """Open SLOW_CLIENTS' connections and keep them misbehaving until ``stop``; returns
    how many of them the receiver closed meanwhile (as it should, in time)."""
    silent_n, slowloris_n, idle_n = SLOW_CLIENTS
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    for _ in range(silent_n + slowloris_n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        readers.append(reader)
        writers.append(writer)
    slowloris = writers[silent_n:]
    for writer in slowloris:
        writer.write(b"POST " + ROUTE_EVENTS.encode() + b" HTTP/1.1\r\nHost: x\r\n")
    for _ in range(idle_n):
        client = await Client.open(port)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await client.push(request)
        readers.append(client.reader)
        writers.append(client.writer)
    while not stop.is_set():
        for writer in slowloris:
            if not writer.is_closing():
                with contextlib.suppress(OSError):
                    writer.write(b"X")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    closed = sum(1 for reader in readers if reader.at_eof())
    for writer in writers:
        writer.close()
    return closed


async def _under_slow_clients(
    port: int, requests: list[bytes], pid: int
) -> tuple[float, list[float], int, int, float, float]:
    """(acknowledged pushes/s, latencies, pushes lost, slow connections the receiver
    closed, its RSS before and at peak in MiB)."""
    loop = asyncio.get_running_loop()
    before = _rss_mib(pid)
    stop = asyncio.Event()
    holder = asyncio.create_task(_hold_slow_clients(port, requests[0], stop))
    await asyncio.sleep(3.0)  # let them all connect
    peak = _rss_mib(pid)
    latencies: list[float] = []
    lost = accepted = 0
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def worker() -> None:
        nonlocal lost, accepted
        client: Client | None = None
        while (item := await due.get()) is not None:
            i, scheduled = item
            try:
                client = client or await Client.open(port)
                status = await client.push(requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError):
                client, status = None, 0  # a dropped connection: that push is lost
            if status == 202:
                accepted += 1
                latencies.append(loop.time() - scheduled)
            else:
                lost += 1
        if client is not None:
            await client.close()

    workers = [asyncio.create_task(worker()) for _ in range(SLOW_CONNECTIONS)]
    start = loop.time() + 0.1
    for i in range(int(RUN_S * SLOW_RATE)):
        scheduled = start + i / SLOW_RATE
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        due.put_nowait((i, scheduled))
        if i % int(SLOW_RATE) == 0:
            peak = max(peak, _rss_mib(pid))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    peak = max(peak, _rss_mib(pid))
    stop.set()
    closed = await holder
    return accepted / RUN_S, latencies, lost, closed, before, peak


async def bench(settings: Settings) -> list[Row]:
    """Saturation and fixed-rate figures for one receiver process."""
    key, secret = "bench", secrets.token_hex(16)
    port, metrics_port = localkafka.free_port(), localkafka.free_port()
    settings = msgspec.structs.replace(
        settings,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
        receiver=ReceiverSettings(
            host="127.0.0.1",
            port=port,
            senders=[PushSender(name="bench", key=key, secret=Secret(secret))],
        ),
    )
    requests = _requests(key, secret)
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(settings,), name="receiver"
    )
    process.start()
    # The load generator's own collector pauses would count as receiver latency.
    gc.freeze()
    gc.disable()
    try:
        await _wait_ready(metrics_port)
        saturated, sat_latency = await _saturate(port, requests)
        await asyncio.sleep(1.0)
        fixed, fixed_latency = await _fixed_rate(port, requests)
        await asyncio.sleep(1.0)
        slow, slow_latency, lost, closed, rss_before, rss_peak = await _under_slow_clients(
            port, requests, process.pid or 0
        )
    finally:
        gc.enable()
        process.terminate()  # SIGTERM: the receiver drains and exits 0
        await asyncio.to_thread(process.join, 30)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)
    ms = 1000.0
    return [
        Row("receiver saturation: acknowledged pushes", saturated, "pushes/s", ">= 3,000"),
        Row("receiver saturation: p50 latency", _percentile(sat_latency, 0.5) * ms, "ms"),
        Row("receiver saturation: p99 latency", _percentile(sat_latency, 0.99) * ms, "ms"),
        Row("receiver at 1000/s: acknowledged pushes", fixed, "pushes/s", "1,000"),
        Row("receiver at 1000/s: p50 latency", _percentile(fixed_latency, 0.5) * ms, "ms"),
        Row("receiver at 1000/s: p99 latency", _percentile(fixed_latency, 0.99) * ms, "ms", "< 50"),
        Row(f"receiver, {sum(SLOW_CLIENTS):,} slow clients: pushes", slow, "pushes/s", "200"),
        Row("receiver, slow clients: pushes lost", lost, "pushes", "0"),
        Row("receiver, slow clients: p99", _percentile(slow_latency, 0.99) * ms, "ms", "< 100"),
        Row("receiver, slow clients: closed by it", closed, "connections"),
        Row("receiver, slow clients: RSS before", rss_before, "MiB"),
        Row("receiver, slow clients: RSS peak", rss_peak, "MiB"),
    ]


if __name__ == "__main__":  # pragma: no cover -- a quick run against KAFKA_PORT
    import os

    from streamproc import topics
    from streamproc.config import KafkaSettings

    async def _main() -> None:
        port = os.environ.get("KAFKA_PORT", "9092")
        settings = Settings(
            topic_prefix=f"benchrx{secrets.token_hex(3)}.",
            kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"),
        )
        await topics.ensure(settings)
        for row in await bench(settings):
            print(f"{row.figure:<45} {row.value:>10,.1f} {row.unit:<9} {row.target}")

    asyncio.run(_main())
