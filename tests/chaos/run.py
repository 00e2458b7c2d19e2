"""The timeline of a chaos run: start, input and faults, drain, verdict, stop.

Faults and live input share one window (``fault_seconds`` from the moment every role is
ready). The drain is then timed from the end of the last fault until every item served or
acknowledged is stored by mParticle (and the pusher has no push left retrying), bounded by
``drain_limit_s``; a few seconds more let late repeats show. Whatever happens, every
process is stopped by pid at the end, and the run checks that none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp

from streamproc.topics import Topics
from tests.chaos import schedule
from tests.chaos.children import strays
from tests.chaos.faults import FaultLog, FaultRunner
from tests.chaos.inputs import StreamReader, feed_ticketmatic, read_ids
from tests.chaos.ledger import BatchReader, Ledger, mparticle_stats
from tests.chaos.operator import Operator
from tests.chaos.options import Options
from tests.chaos.stack import Stack
from tests.chaos.verdict import Verdict
from tests.topics import read_topic

SETTLE_S = 5.0


class Watch:
    """What the run knows so far: the sources read back, the pusher's ids, mParticle's store."""

    def __init__(self, stack: Stack, pushes: Path) -> None:
        self.stack = stack
        self.pushes = pushes
        self.ledger = Ledger()
        self.stream = StreamReader(stack.tm_url)
        self.batches = BatchReader(stack.mp_url)
        self.served = 0
        self.acked = 0
        self.sent = 0
        # The progress line and the drain both collect: the readers page on from where
        # they stopped, so two collects at once would skip a page.
        self._one_at_a_time = asyncio.Lock()

    async def collect(self, http: aiohttp.ClientSession) -> None:
        async with self._one_at_a_time:
            await self._collect(http)

    async def _collect(self, http: aiohttp.ClientSession) -> None:
        for account, ids in (await self.stream.read_new(http)).items():
            self.ledger.add_ticketmatic(account, ids)
            self.served += len(ids)
        acked = read_ids(self.pushes.with_suffix(".acked"))
        sent = read_ids(self.pushes.with_suffix(".sent"))
        self.ledger.add_ticketure(acked[self.acked :], sent[self.sent :])
        self.acked, self.sent = len(acked), len(sent)
        await self.batches.read_new(http, self.ledger)

    def line(self, elapsed: float, faults: FaultLog, mp: dict[str, object]) -> str:
        missing = len(self.ledger.missing())
        return (
            f"[{elapsed:6.1f} s] served {self.served} | acked {self.acked} | delivered"
            f" {len(self.ledger.delivered)} | missing {missing} | repeats {mp.get('duplicates', 0)}"
            f" | refused {mp.get('batches_refused', 0)} | kills {sum(faults.kills.values())}"
            f" | broker restarts {len(faults.broker)} | crashes {len(faults.crashes)}"
        )


async def _progress(watch: Watch, http: aiohttp.ClientSession, faults: FaultLog, t0: float) -> None:
    while True:
        await watch.collect(http)
        mp = await mparticle_stats(http, watch.stack.mp_url)
        print(watch.line(time.monotonic() - t0, faults, mp), flush=True)
        await asyncio.sleep(5)


async def _diagnose(stack: Stack, http: aiohttp.ClientSession) -> None:
    """Each role's /readyz and the map stage's stuck-transaction and lag gauges."""
    for role, url in stack.metrics.items():
        try:
            async with http.get(url + "/readyz") as response:
                print(f"  {role} /readyz {response.status}: {(await response.text())[:300]}")
            async with http.get(url + "/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith(
                        ("streamproc_consumer_stuck_transaction_seconds", "streamproc_consumer_lag")
                    ) and not line.endswith(" 0.0"):
                        print(f"    {line}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            print(f"  {role}: no answer ({exc!r})")


async def run(options: Options, workdir: Path, token: str) -> Verdict:
    wall = time.monotonic()
    plan = schedule.plan(options)
    print(
        f"chaos: seed {options.seed}, {options.items} items, {options.fault_seconds:.0f} s of"
        f" faults, drain limit {options.drain_limit_s:.0f} s; logs in {workdir / 'logs'}"
    )
    print("fault plan (seconds after every role is ready):\n" + schedule.summary(plan), flush=True)
    stack = Stack(options, workdir, token)
    codes: dict[str, int | None] = {}
    # The mParticle simulator validates every batch on its one event loop (about 4 ms a
    # batch under mParticle's schema): its inspection answers wait behind that.
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await stack.start()
            print(f"mParticle schema: {stack.schema}; broker on port {stack.kafka_port}")
            t0 = time.monotonic()
            runner = FaultRunner(stack, http)
            seconds = options.fault_seconds
            pushes = stack.start_pusher(
                options.pushes, options.pushes / (0.7 * seconds), seconds, options.drain_limit_s
            )
            watch = Watch(stack, pushes)
            operator = Operator(stack, http)
            background = [
                asyncio.create_task(runner.watch()),
                asyncio.create_task(operator.watch(t0)),
                asyncio.create_task(_progress(watch, http, runner.log, t0)),
            ]
            try:
                await asyncio.gather(
                    runner.run(plan, t0),
                    feed_ticketmatic(http, stack.tm_url, options.live_per_account, seconds),
                )
                last_fault = max(runner.log.last_fault_end, t0 + seconds)
                print(f"faults over at {last_fault - t0:.1f} s; draining", flush=True)
                drained_at = await _drain(watch, http, stack, last_fault + options.drain_limit_s)
                if drained_at is None:
                    await _diagnose(stack, http)
                await asyncio.sleep(SETTLE_S)
                await watch.collect(http)
                mp = await mparticle_stats(http, stack.mp_url)
                tm = await _tm_generated(http, stack.tm_url)
                dlq = Topics.for_prefix(stack.settings.topic_prefix).dlq
                dead = len(await read_topic(stack.settings, dlq))
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
    finally:
        codes = stack.close()
    await asyncio.sleep(1)  # the last exits settle before looking for strays
    ledger = watch.ledger
    lost = sorted(ledger.missing())
    duplicated = ledger.duplicated()
    return Verdict(
        seed=options.seed,
        ticketmatic_generated=tm,
        ticketmatic_served=watch.served,
        ticketure_pushed=len(ledger.sent),
        ticketure_acknowledged=watch.acked,
        expected=len(ledger.expected),
        delivered=len(ledger.expected & ledger.delivered.keys()),
        lost=len(lost),
        duplicated=len(duplicated),
        stored=int(mp.get("batches_stored", -1)),
        stored_read=ledger.batches_read,
        repeats=int(mp.get("duplicates", 0)),
        repeats_differing=int(mp.get("duplicates_differing", 0)),
        invalid=int(mp.get("batches_refused", 0)),
        unknown_batches=len(ledger.unresolved),
        unacknowledged_delivered=ledger.unacknowledged_delivered(),
        dead_lettered=dead,
        kills=dict(runner.log.kills),
        broker_restarts=[vars(r) for r in runner.log.broker],
        crashes=[vars(c) for c in runner.log.crashes],
        runbook_aborts=[vars(r) for r in operator.remedies],
        drained=drained_at is not None,
        drain_s=None if drained_at is None else max(0.0, drained_at - last_fault),
        drain_limit_s=options.drain_limit_s,
        exit_codes=codes,
        strays=strays(token),
        mparticle_answers=dict(mp.get("answers", {})),
        fault_seconds=seconds,
        wall_seconds=time.monotonic() - wall,
        lost_sample=lost[:20],
        duplicated_sample=sorted(duplicated)[:20],
    )


async def _drain(
    watch: Watch, http: aiohttp.ClientSession, stack: Stack, deadline: float
) -> float | None:
    """When everything that must arrive had arrived (monotonic), or None by ``deadline``."""
    while time.monotonic() < deadline:
        await watch.collect(http)
        pusher_done = stack.pusher is None or not stack.pusher.alive()
        if pusher_done and watch.ledger.expected and not watch.ledger.missing():
            return time.monotonic()
        await asyncio.sleep(1.0)
    return None


async def _tm_generated(http: aiohttp.ClientSession, tm_url: str) -> int:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"{tm_url}/_sim/stats") as response:
            accounts = (await response.json())["accounts"]
            return sum(int(a["generated"]) for a in accounts.values())
    return -1
