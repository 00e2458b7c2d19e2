"""Applying the fault plan to a running stack, and restarting what dies of its own.

Each fault runs as a task of its own at its planned time, so that a role can be killed
while the broker is still coming back; broker restarts take turns. Before the broker is
stopped, the run looks (for up to 30 s) for a moment when the map stage has a transaction
open: records written to the batches topic beyond what read_committed readers see. A role
that exits without being told to is a crash: it is recorded with its exit code and the
end of its log, and started again, as Kubernetes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.chaos.ledger import mparticle_stats
from tests.chaos.schedule import Fault
from tests.chaos.stack import Stack
from tests.mapper.test_processor_procs import OutputEnds

OPEN_TRANSACTION_WAIT_S = 30.0  # how long a broker stop waits for a map transaction open


@dataclass
class BrokerRestart:
    signal: str
    open_transaction_records: int  # batches records written but not yet committed at the stop
    down_s: float  # from the signal until it answered again


@dataclass
class Crash:
    role: str
    exit_code: int | None
    log_tail: str


@dataclass
class FaultLog:
    kills: Counter[str] = field(default_factory=Counter)
    broker: list[BrokerRestart] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0  # time.monotonic() when the last fault was over

    def ended(self) -> None:
        self.last_fault_end = max(self.last_fault_end, time.monotonic())


class FaultRunner:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.log = FaultLog()
        self._broker_turn = asyncio.Lock()
        # mParticle's faults wait while the broker is away: with nothing flowing to
        # deliver, an outage would be felt by no request.
        self._broker_up = asyncio.Event()
        self._broker_up.set()

    async def run(self, plan: list[Fault], started: float) -> None:
        """Apply every fault at its time after ``started`` (monotonic); return when all are over."""
        tasks = []
        for fault in plan:
            await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            tasks.append(asyncio.create_task(self._apply(fault, started)))
        await asyncio.gather(*tasks)

    async def _apply(self, fault: Fault, started: float) -> None:
        at = time.monotonic() - started
        self.log.applied.append(f"{at:6.1f} s  {fault.describe()}")
        print(f"  [{at:6.1f} s] {fault.describe()}", flush=True)
        if fault.kind == "kill":
            await self._kill(fault.role, fault.duration_s)
        elif fault.kind == "broker":
            async with self._broker_turn:
                await self._broker(signal.Signals[fault.signal], fault.duration_s)
        elif fault.kind == "rate_limit":
            await self._broker_up.wait()
            await self._storm(fault.duration_s)
        elif fault.kind == "mparticle_outage":
            await self._broker_up.wait()
            base = await self._answers("503")
            await self._mparticle({"outage": "503"})
            await asyncio.sleep(fault.duration_s)
            await self._mparticle({"outage": None})
            print(f"  mParticle outage over: {await self._answers('503') - base} answered 503")
        else:
            url = f"{self.stack.tm_url}/_sim/outage"
            await self._post(url, params={"seconds": f"{fault.duration_s:g}"})
            await asyncio.sleep(fault.duration_s)
        self.log.ended()

    async def _kill(self, role: str, restart_after_s: float) -> None:
        child = self.stack.roles[role]
        if child.alive():
            child.kill()
            self.log.kills[role] += 1
        await asyncio.sleep(restart_after_s)
        child.start()

    async def _broker(self, sig: signal.Signals, down_for_s: float) -> None:
        stopped_at = time.monotonic()
        open_records = 0
        async with OutputEnds(self.stack.settings) as ends:
            deadline = time.monotonic() + OPEN_TRANSACTION_WAIT_S
            while time.monotonic() < deadline:
                committed, written = await ends.committed_and_written()
                if written > committed:
                    open_records = written - committed
                    break
                await asyncio.sleep(0.05)
            stopped_at = time.monotonic()
            self._broker_up.clear()
            # Signalled while the readers are still open: the transaction seen is still open.
            self.stack.signal_broker(sig)
        await self.stack.broker_gone()
        await asyncio.sleep(down_for_s)
        await self.stack.start_broker()
        self._broker_up.set()
        down = time.monotonic() - stopped_at
        self.log.broker.append(BrokerRestart(sig.name, open_records, down))
        print(
            f"  broker back after {down:.1f} s ({sig.name}; {open_records} batch records of"
            " an open transaction at the stop)",
            flush=True,
        )

    async def _storm(self, seconds: float) -> None:
        """429s for ``seconds``: the simulator's rate limit cut to 20 batches/s, and every
        request answered 429 while it lasts. Its queue of 429s is a count, not a time, so
        it is kept topped up with two at a time: when the storm ends, at most two are left."""
        await self._mparticle({"rate_limit_batches_per_s": 20, "retry_after_s": 2})
        base = await self._answers("429")
        queued = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if await self._answers("429") - base >= queued:
                await self._mparticle(
                    {"fail_next": {"status": 429, "count": 2, "retry_after_s": 1}}
                )
                queued += 2
            await asyncio.sleep(0.25)
        await self._mparticle({"rate_limit_batches_per_s": 270, "retry_after_s": 1})
        print(f"  429 storm over: {await self._answers('429') - base} answered 429")

    async def _answers(self, status: str) -> int:
        """How many times the mParticle simulator has answered ``status`` so far."""
        stats = await mparticle_stats(self.http, self.stack.mp_url)
        return int(stats.get("answers", {}).get(status, 0))

    async def _mparticle(self, change: dict[str, Any]) -> None:
        await self._post(f"{self.stack.mp_url}/_sim/control", json=change)

    async def _post(self, url: str, **kwargs: Any) -> None:
        """POST to a simulator's control API, retried: a fault that is not applied is a bug."""
        for _ in range(20):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.post(url, **kwargs) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the simulator's control API refused {url} {kwargs}")

    async def watch(self) -> None:
        """Forever: a role that exited without being told to is recorded and restarted."""
        while True:
            for name, child in self.stack.roles.items():
                if child.popen is not None and not child.alive() and not child.expected_exit:
                    crash = Crash(name, child.exit_code(), child.tail(30))
                    self.log.crashes.append(crash)
                    print(f"  CRASH: {name} exited by itself with {crash.exit_code}", flush=True)
                    child.start()
            await asyncio.sleep(1.0)
