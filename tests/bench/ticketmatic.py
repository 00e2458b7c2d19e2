"""Draining a Ticketmatic backlog: items per second from the simulator into Kafka.

The simulator runs as its own process (as Ticketmatic would be elsewhere) with a backlog of
100,000 items spread over the last hour, served in pages of 1,000; one poller, in this
process, drains it with one Kafka transaction per page. The clock runs from the poller's
start (producer init and cursor restore included) to the commit of the last item.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from asyncio.subprocess import Process

import aiohttp

from streamproc.config import Secret, Settings, TicketmaticAccount, TicketmaticSettings
from streamproc.sources.ticketmatic.client import EventstreamClient
from streamproc.sources.ticketmatic.poller import AccountPoller
from tests.bench import Row
from tests.localkafka import free_port

BACKLOG = 100_000
PAGE = 1_000
ACCOUNT = TicketmaticAccount(name="bench", access_key="bench-ak", secret_key=Secret("bench-sk"))


async def _wait_for_sim(url: str, proc: Process, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError("the Ticketmatic simulator exited early")
            try:
                async with session.get(f"{url}/_sim/stats") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("the Ticketmatic simulator did not start")


async def bench(settings: Settings) -> list[Row]:
    """Items per second draining the backlog with one poller."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sim = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "streamproc.cli",
            "sim",
            "ticketmatic",
            "--account",
            f"{ACCOUNT.name}:{ACCOUNT.access_key}:{ACCOUNT.secret_key.reveal()}",
            "--port",
            str(port),
            "--page-size",
            str(PAGE),
            "--backlog",
            str(BACKLOG),
            "--backlog-span",
            "3600",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_for_sim(url, sim)
        run_settings = Settings(
            topic_prefix=settings.topic_prefix,
            kafka=settings.kafka,
            topics=settings.topics,
            ticketmatic=TicketmaticSettings(base_url=url, accounts=[ACCOUNT], poll_interval_s=1),
        )
        stop = asyncio.Event()
        async with EventstreamClient(url) as client:
            poller = AccountPoller(run_settings, ACCOUNT, client, poller_id="bench")
            start = time.perf_counter()
            task = asyncio.create_task(poller.run(stop))
            while poller.items_written < BACKLOG and not task.done():
                await asyncio.wait({task}, timeout=0.01)
            elapsed = time.perf_counter() - start
            stop.set()
            await task
    finally:
        sim.terminate()
        await asyncio.wait_for(sim.wait(), timeout=30)
    return [
        Row(
            "Ticketmatic poll: drain 100k backlog, 1000-item pages, 1 poller",
            poller.items_written / elapsed,
            "items/s",
            ">= 10,000",
        )
    ]
