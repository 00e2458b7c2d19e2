"""The verdict of a chaos run: a table for people, one JSON line for tools, an exit code.

The run fails (exit 1) on any loss (an item acknowledged or served that mParticle never
stored), any duplicate (an item stored under two distinct ``source_request_id``), any
batch mParticle refused as invalid under its schema, any stored batch naming no item
sent, a drain that did not finish within the limit, a process left running, or broker
restarts none of which stopped the broker while a map transaction was open. Crashes
(a role exiting by itself), repeats of one ``source_request_id`` (mParticle drops them)
and dead letters are reported, not failed on: the first two are allowed by the design, and
a dead-lettered item shows up as lost anyway.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

JSON_MARK = "CHAOS_VERDICT "


@dataclass
class Verdict:
    seed: int
    ticketmatic_generated: int  # by the simulator (its stats), both accounts
    ticketmatic_served: int  # items it holds, read back through its API (each once)
    ticketure_pushed: int  # records in pushes sent
    ticketure_acknowledged: int  # records in pushes answered 2xx
    expected: int  # served + acknowledged: what must reach mParticle
    delivered: int  # of those, stored by mParticle
    lost: int
    stored: int  # batches the mParticle simulator says it stored
    stored_read: int  # ... and how many of them the run read back (the same, or a harness bug)
    duplicated: int  # items stored under more than one distinct source_request_id
    repeats: int  # batches sent again under the same source_request_id (dropped by mParticle)
    repeats_differing: int  # ... whose content differed from the first
    invalid: int  # batches mParticle's schema refused
    unknown_batches: int  # stored batches naming no item sent
    unacknowledged_delivered: int  # pushes never answered 2xx that reached mParticle anyway
    dead_lettered: int  # records in the dead-letter topic
    kills: dict[str, int]
    broker_restarts: list[dict[str, object]]
    crashes: list[dict[str, object]]
    runbook_aborts: list[dict[str, Any]]  # hanging transactions aborted: StuckTransaction fired
    drained: bool
    drain_s: float | None  # from the end of the last fault until every item was stored
    drain_limit_s: float
    exit_codes: dict[str, int | None]  # each role's exit code on the final SIGTERM
    strays: list[int]
    mparticle_answers: dict[str, int]
    fault_seconds: float
    wall_seconds: float
    lost_sample: list[str] = field(default_factory=list)
    duplicated_sample: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} lost")
        if self.duplicated:
            found.append(f"{self.duplicated} duplicated")
        if self.invalid:
            found.append(f"{self.invalid} invalid")
        if self.unknown_batches:
            found.append(f"{self.unknown_batches} batches of unknown items")
        if self.stored != self.stored_read:
            found.append(f"the run read {self.stored_read} of {self.stored} stored batches")
        if not self.drained:
            found.append(f"not drained within {self.drain_limit_s:.0f} s")
        if self.strays:
            found.append(f"processes left running: {self.strays}")
        if self.broker_restarts and not any(
            r["open_transaction_records"] for r in self.broker_restarts
        ):
            found.append("no broker stop caught a map transaction open (the fault was not applied)")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        kills = Counter({k.split("-")[0]: 0 for k in self.kills})
        for name, n in self.kills.items():
            kills[name.split("-")[0]] += n
        restarts = ", ".join(
            f"{r['signal']} (open txn: {r['open_transaction_records']} records, down"
            f" {float(str(r['down_s'])):.0f} s)"
            for r in self.broker_restarts
        )
        exits = ", ".join(f"{k} {v}" for k, v in self.exit_codes.items())
        rows = [
            ("seed", str(self.seed)),
            (
                "Ticketmatic items generated / read back",
                f"{self.ticketmatic_generated} / {self.ticketmatic_served}",
            ),
            (
                "Ticketure records pushed / acknowledged",
                f"{self.ticketure_pushed} / {self.ticketure_acknowledged}",
            ),
            ("items that must arrive", str(self.expected)),
            ("delivered (stored by mParticle)", str(self.delivered)),
            ("batches stored by mParticle / read back", f"{self.stored} / {self.stored_read}"),
            ("LOST", str(self.lost)),
            ("DUPLICATED (distinct source_request_id)", str(self.duplicated)),
            ("INVALID (schema)", str(self.invalid)),
            ("batches of unknown items", str(self.unknown_batches)),
            (
                "repeats (same source_request_id)",
                f"{self.repeats} ({self.repeats_differing} differing)",
            ),
            ("unacknowledged pushes delivered anyway", str(self.unacknowledged_delivered)),
            ("dead-lettered", str(self.dead_lettered)),
            (
                "kills",
                f"{sum(kills.values())}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(kills.items())),
            ),
            ("broker restarts", f"{len(self.broker_restarts)}: {restarts}"),
            ("crashes (exits of its own)", str(len(self.crashes))),
            (
                "hanging transactions aborted (runbook)",
                str(sum(len(r["aborted"]) for r in self.runbook_aborts))
                + "".join(f" at {r['at_s']:.0f} s" for r in self.runbook_aborts),
            ),
            (
                "drain after the last fault",
                f"{self.drain_s:.1f} s"
                if self.drain_s is not None
                else f"NOT DRAINED in {self.drain_limit_s:.0f} s",
            ),
            ("exit codes on SIGTERM", exits),
            (
                "mParticle answers",
                ", ".join(f"{k}: {v}" for k, v in sorted(self.mparticle_answers.items())),
            ),
            ("faults / wall time", f"{self.fault_seconds:.0f} s / {self.wall_seconds:.0f} s"),
            ("verdict", "PASS" if self.ok else "FAIL: " + "; ".join(self.failures)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)

    def json_line(self) -> str:
        """``CHAOS_VERDICT {...}``: every field, and ``ok`` and ``failures``."""
        body = asdict(self) | {"ok": self.ok, "failures": self.failures}
        return JSON_MARK + orjson.dumps(body).decode()
