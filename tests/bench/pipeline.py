"""End-to-end latency through ``streamproc run`` between the simulators.

``streamproc run`` runs in a process of its own; this process hosts the mParticle and
Ticketmatic simulators and pushes Ticketure audit records to the receiver open-loop at
1000 per second for ``RUN_S``. For each push, the latency is from the receiver's 202 to the
moment the mParticle simulator accepted the batch with that push's ``source_request_id``
(its 202). Ticketmatic items wait for the next poll (``poll_interval_s``, 5 s by default),
so their latency is reported apart, from the item's own time (second resolution) to the
simulator's acceptance.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from streamproc.config import (
    MParticleSettings,
    PushSender,
    ReceiverSettings,
    Secret,
    Settings,
    TicketmaticAccount,
    TicketmaticSettings,
    to_env,
)
from streamproc.formats.ticketure import ENCODER, TicketAttributes, TicketAudit
from streamproc.mapping.ids import source_request_id
from streamproc.sim.credentials import basic
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from tests import localkafka
from tests.bench import Row

RATE = 1000.0
RUN_S = 15.0
TM_RATE = 20.0


class _TimedSim(MParticleSim):
    """The mParticle simulator, noting when it accepted each ``source_request_id``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accepted_at: dict[str, float] = {}
        self.event_ms: dict[str, int] = {}

    def _store(self, api_key: str, batches: list[dict[str, Any]]) -> None:
        now = time.time()
        for batch in batches:
            sid = batch.get("source_request_id")
            if isinstance(sid, str) and sid not in self.accepted_at:
                self.accepted_at[sid] = now
                events = batch.get("events") or [{}]
                self.event_ms[sid] = int(events[0].get("data", {}).get("timestamp_unixtime_ms", 0))
        super()._store(api_key, batches)


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    return {**env, **to_env(settings)}


def _record(i: int) -> tuple[str, bytes]:
    event_id = f"bench-{uuid.uuid4().hex}"
    record = TicketAudit(
        action="purchased",
        occurred_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        event_id=event_id,
        email=f"visitor{i % 5000}@example.com",
        attributes=TicketAttributes(
            ticket_order_id=f"order-{i // 3}", price_paid="25.00", ticket_type="Adult"
        ),
    )
    return event_id, ENCODER.encode(record)


async def _push(port: int, auth: str, acked: dict[str, float]) -> int:
    """Open-loop pushes at ``RATE`` for ``RUN_S``; returns how many were not acknowledged."""
    url = f"http://127.0.0.1:{port}/ticketure/events"
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    failed = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            nonlocal failed
            event_id, body = _record(i)
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 202:
                        acked[event_id] = time.time()
                    else:
                        failed += 1
            except aiohttp.ClientError:
                failed += 1

        tasks = []
        start = time.monotonic()
        total = int(RATE * RUN_S)
        for i in range(total):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return failed


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.2)):
        if condition():
            return
        await asyncio.sleep(0.2)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bench(settings: Settings) -> list[Row]:
    tm = TicketmaticSim([SimAccount("bench", "ak", "sk")], rate=TM_RATE, seed=1)
    mp = _TimedSim(rate_limit_batches_per_s=None)
    async with tm, mp:
        rx_port, metrics_port = localkafka.free_port(), localkafka.free_port()
        run_settings = Settings(
            topic_prefix=settings.topic_prefix,
            kafka=settings.kafka,
            topics=settings.topics,
            metrics_host="127.0.0.1",
            metrics_port=metrics_port,
            ticketmatic=TicketmaticSettings(
                base_url=tm.url,
                accounts=[
                    TicketmaticAccount(name="bench", access_key="ak", secret_key=Secret("sk"))
                ],
            ),
            receiver=ReceiverSettings(
                host="127.0.0.1",
                port=rx_port,
                senders=[PushSender(name="bench", key="k", secret=Secret("s"))],
            ),
            mparticle=MParticleSettings(
                base_url=mp.url,
                api_key="sim-key",
                api_secret=Secret("sim-secret"),
                rate_limit_batches_per_s=1_000_000,
            ),
            log_level="WARNING",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamproc.cli",
            "run",
            env=_env(run_settings),
            stdin=subprocess.DEVNULL,
        )
        try:
            await _until(lambda: localkafka.port_open(rx_port), 60)
            await asyncio.sleep(3)  # groups joined, first poll done
            acked: dict[str, float] = {}
            failed = await _push(rx_port, basic("k", "s"), acked)
            wanted = {source_request_id("ticketure", e): t for e, t in acked.items()}
            await _until(lambda: wanted.keys() <= mp.accepted_at.keys(), 60)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    push_ms = [(mp.accepted_at[s] - t) * 1000 for s, t in wanted.items() if s in mp.accepted_at]
    tm_sids = {source_request_id("ticketmatic", f"bench/{i}") for i, _ in tm.items("bench")}
    tm_s = [mp.accepted_at[s] - mp.event_ms[s] / 1000 for s in tm_sids if s in mp.accepted_at]
    missing = len(wanted) - len(push_ms)
    return [
        Row(
            f"pipeline: pushes acked at {RATE:.0f}/s for {RUN_S:.0f} s (not acked: {failed})",
            len(acked),
            "pushes",
        ),
        Row(
            f"pipeline: receiver 202 -> mParticle 202, p50 (missing: {missing})",
            _pct(push_ms, 0.5),
            "ms",
        ),
        Row("pipeline: receiver 202 -> mParticle 202, p99", _pct(push_ms, 0.99), "ms", "<= 300 ms"),
        Row(
            "pipeline: Ticketmatic item time -> mParticle 202, p50 (5 s polls)",
            _pct(tm_s, 0.5),
            "s",
        ),
        Row("pipeline: Ticketmatic item time -> mParticle 202, p99", _pct(tm_s, 0.99), "s"),
    ]
