"""The fault plan: which fault, when and for how long, drawn from the seed alone.

Pure: the same options give the same plan, printed at the start of a run so that a
failing seed can be replayed and read. Times are seconds from the moment every role is
up; every fault ends before ``fault_seconds`` (a broker restart may take longer to come
back: the run waits for it before the drain is timed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from tests.chaos.options import Options

ROLES = ("poll", "receive", "map-1", "map-2", "deliver-1", "deliver-2")

Kind = Literal["kill", "broker", "rate_limit", "mparticle_outage", "ticketmatic_outage"]


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: Kind
    duration_s: float  # kill: until the restart; broker: down before starting again
    role: str = ""  # kill: which role
    signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL"  # kill, broker: how it is stopped

    def describe(self) -> str:
        if self.kind == "kill":
            return f"SIGKILL {self.role}, restart after {self.duration_s:.1f} s"
        if self.kind == "broker":
            return f"broker {self.signal}, start again after {self.duration_s:.1f} s"
        if self.kind == "rate_limit":
            return f"mParticle 429 storm for {self.duration_s:.0f} s"
        if self.kind == "mparticle_outage":
            return f"mParticle outage (503) for {self.duration_s:.0f} s"
        return f"Ticketmatic outage (503) for {self.duration_s:.0f} s"


def plan(options: Options) -> list[Fault]:
    """The faults of a run, in time order."""
    rng = random.Random(options.seed)
    end = options.fault_seconds
    faults: list[Fault] = []
    at = 4.0
    low, high = options.kill_every_s
    while True:
        at += rng.uniform(low, high)
        restart_after = rng.uniform(0.5, 3.0)
        if at + restart_after > end - 2:
            break
        faults.append(Fault(at, "kill", restart_after, role=rng.choice(ROLES)))
    # Broker restarts spread over the window, away from its ends (items must be flowing).
    n = options.broker_restarts
    for i in range(n):
        centre = end * (i + 1) / (n + 1)
        down_for = rng.uniform(2.0, 6.0)
        signal: Literal["SIGKILL", "SIGTERM"] = "SIGTERM" if i % 2 == 0 else "SIGKILL"
        at = min(max(8.0, centre + rng.uniform(-0.08, 0.08) * end), end - down_for - 8)
        faults.append(Fault(at, "broker", down_for, signal=signal))
    # The 429 storm early, the outage after it: an outage's 503s come before the queued
    # 429s in the simulator, so overlapping them would leave the storm unspent.
    storm = min(15.0, end / 5)
    storm_at = rng.uniform(0.05, 0.35) * end
    faults.append(Fault(storm_at, "rate_limit", storm))
    outage = options.outage_seconds
    earliest, latest = storm_at + storm + 2, end - outage - 3
    faults.append(Fault(rng.uniform(earliest, max(earliest, latest)), "mparticle_outage", outage))
    tm_outage = min(15.0, end / 5)
    faults.append(
        Fault(rng.uniform(0.1, 0.9) * (end - tm_outage - 3), "ticketmatic_outage", tm_outage)
    )
    return sorted(faults, key=lambda f: f.at_s)


def summary(faults: list[Fault]) -> str:
    """One line per fault, for the log of the run."""
    return "\n".join(f"  {f.at_s:6.1f} s  {f.describe()}" for f in faults)
