"""The on-call engineer of a chaos run: when StuckTransaction fires, its runbook is applied.

A single broker stopped (even with SIGTERM) while a transaction commits can leave that
transaction hanging: the coordinator writes its commit as complete while the markers never
reach the data partitions (they have no leader while the only broker shuts down), so after
the restart every ``read_committed`` reader waits below them, for good. Kafka does not
clear such a transaction by itself; streamproc shows it (``streamproc_consumer_stuck_
transaction_seconds``, the StuckTransaction alert) and its runbook clears it with Kafka's
own tool. This plays that part, as late as a person paged by the alert could: once a
gauge on some role's ``/metrics`` has stayed above the alert's 90 s for its 2 minutes, it
runs ``kafka-transactions.sh find-hanging`` and aborts what it lists (open over a minute,
unknown to the coordinator), and the verdict reports each abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests import localkafka
from tests.chaos.stack import Stack

STUCK = "streamproc_consumer_stuck_transaction_seconds"
ALERT_FIRES_S = 90.0 + 120.0  # StuckTransaction: > 90 s, for 2 minutes


@dataclass
class Remedy:
    at_s: float  # after the start of the faults
    stuck_s: float  # the largest gauge seen then
    aborted: list[str] = field(default_factory=list)  # topic[partition]@start offset


class Operator:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.remedies: list[Remedy] = []

    async def watch(self, t0: float) -> None:
        while True:
            await asyncio.sleep(5)
            stuck = await self._stuck_s()
            if stuck > ALERT_FIRES_S:
                aborted = await asyncio.to_thread(self._abort_hanging)
                if aborted:
                    remedy = Remedy(time.monotonic() - t0, stuck, aborted)
                    self.remedies.append(remedy)
                    print(
                        f"  [{remedy.at_s:6.1f} s] StuckTransaction fired ({stuck:.0f} s):"
                        f" runbook aborted {', '.join(aborted)}",
                        flush=True,
                    )

    async def _stuck_s(self) -> float:
        worst = 0.0
        for url in self.stack.metrics.values():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.get(url + "/metrics") as response:
                    text = await response.text()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == STUCK:
                            worst = max(worst, sample.value)
        return worst

    def _abort_hanging(self) -> list[str]:
        bootstrap = f"127.0.0.1:{self.stack.kafka_port}"
        # Transactions open over a minute (twice the 30 s timeout) the coordinator does not
        # know: no healthy transaction is ever listed.
        found = localkafka.run_transactions(
            bootstrap, ["find-hanging", "--broker-id", "1", "--max-transaction-timeout", "1"]
        )
        aborted = []
        for line in found.stdout.splitlines()[1:]:
            columns = line.split()
            if len(columns) < 6 or not columns[1].isdigit():
                continue
            topic, partition, offset = columns[0], columns[1], columns[5]
            args = ["abort", "--topic", topic, "--partition", partition, "--start-offset", offset]
            if localkafka.run_transactions(bootstrap, args).returncode == 0:
                aborted.append(f"{topic}[{partition}]@{offset}")
        return aborted
