"""A hostile eventstream: each of the simulator's fault modes against a live poller.

For every fault the same things are checked, on the real broker: nothing is lost (every
item the simulator kept is in the topic exactly once, in order per key, read_committed),
the cursor never runs ahead of the last item served, and the fault shows in its metric
within one poll interval of the first bad answer.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamproc.config import Settings
from streamproc.formats.ticketmatic import Cursor, position_key
from streamproc.health import Health
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic import cursor as cursors
from streamproc.sources.ticketmatic.service import PollService
from streamproc.topics import Topics, ensure
from tests import metrics
from tests.procs import wait_for
from tests.sources.ticketmatic.support import (
    TopicReader,
    assert_exactly_once_in_order,
    complete,
    tm_settings,
    topic_partitions,
)

pytestmark = pytest.mark.kafka

ACME = SimAccount("acme", "ak-acme", "sk-acme")
POLL_INTERVAL_S = 0.2
REQUEST_TIMEOUT_S = 1.0
# What a poller may take to show a fault: the request, then at most one poll interval.
VISIBLE_WITHIN_S = REQUEST_TIMEOUT_S + POLL_INTERVAL_S + 1.0


def sample(name: str, **labels: str) -> float:
    """Account acme's series (0 when it does not exist yet)."""
    return metrics.sample(name, account="acme", **labels)


def hostile_settings(make_settings: Callable[..., Settings], sim: TicketmaticSim) -> Settings:
    return tm_settings(
        make_settings,
        sim,
        [ACME],
        poll_interval_s=POLL_INTERVAL_S,
        request_timeout_s=REQUEST_TIMEOUT_S,
        retry_after_max_s=1.0,
        max_response_bytes=1024 * 1024,
        stalled_after_s=1.0,
    )


@dataclass
class Poller:
    """A poll service running in this process until ``stop``."""

    settings: Settings
    health: Health = field(default_factory=Health)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        service = PollService(
            self.settings,
            health=self.health,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            backoff_base_s=0.05,
            backoff_max_s=0.2,
            auth_retry_s=0.2,
        )
        self.task = asyncio.create_task(service.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    def account_reason(self) -> str | None:
        """The /readyz reason of the account's component, None while it is ready."""
        state = self.health.report().get("ticketmatic:acme")
        return None if state is None or state["ready"] else str(state["reason"])


async def saved_cursor(settings: Settings) -> Cursor:
    topic = Topics.for_prefix(settings.topic_prefix).cursors
    parts = await topic_partitions(settings, topic)
    return (await cursors.restore(settings, topic, [tp.partition for tp in parts]))["acme"]


# (fault, how to inject it, the metric and labels that must move)
FAULTS: list[tuple[str, Callable[[TicketmaticSim], None], str, dict[str, str]]] = [
    (
        "descending",
        lambda sim: sim.misbehave("descending", count=3),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "ids_not_ascending"},
    ),
    (
        "future_id",
        lambda sim: sim.misbehave("future_id", count=3),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "future_item"},
    ),
    (
        "runaway_nextid",
        lambda sim: sim.misbehave("runaway_nextid", count=3),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "nextid_future"},
    ),
    (
        "skip_nextid",
        lambda sim: sim.misbehave("skip_nextid", count=3),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "nextid_ahead"},
    ),
    (
        "deep",
        lambda sim: sim.misbehave("deep", count=2),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "too_deep"},
    ),
    (
        "oversized",
        lambda sim: sim.misbehave("oversized", count=2, size=32 * 1024 * 1024),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "too_large"},
    ),
    (
        "oversized_chunked",
        lambda sim: sim.misbehave(
            "oversized", count=2, size=32 * 1024 * 1024, content_length=False
        ),
        "streamproc_ticketmatic_malformed_pages_total",
        {"reason": "too_large"},
    ),
    (
        "drip",
        lambda sim: sim.misbehave("drip", count=2, chunk=16, interval=0.3),
        "streamproc_ticketmatic_polls_total",
        {"outcome": "transport_error"},
    ),
    (
        "retry_after_huge",
        lambda sim: sim.misbehave("retry_after", count=2, value="99999999"),
        "streamproc_ticketmatic_polls_total",
        {"outcome": "rate_limited"},
    ),
    (
        "retry_after_non_finite",
        lambda sim: sim.misbehave("retry_after", count=2, value="1e999"),
        "streamproc_ticketmatic_polls_total",
        {"outcome": "rate_limited"},
    ),
    (
        "reset",
        lambda sim: sim.outage(1.0, reset=True),
        "streamproc_ticketmatic_polls_total",
        {"outcome": "transport_error"},
    ),
]


@pytest.mark.parametrize(
    ("inject", "metric", "labels"),
    [f[1:] for f in FAULTS],
    ids=[f[0] for f in FAULTS],
)
async def test_a_fault_loses_nothing_and_shows_at_once(
    make_settings: Callable[..., Settings],
    inject: Callable[[TicketmaticSim], None],
    metric: str,
    labels: dict[str, str],
) -> None:
    """Fault, then recovery: every item once, cursor at the last real item, fault counted."""
    async with TicketmaticSim([ACME], page_size=20) as sim:
        sim.generate("acme", 30, span_s=60)
        settings = hostile_settings(make_settings, sim)
        await ensure(settings)
        topic = Topics.for_prefix(settings.topic_prefix).ticketmatic
        before = sample(metric, **labels)
        poller = Poller(settings)
        async with TopicReader(settings, topic) as reader:
            poller.start()
            await reader.until(complete(sim, ["acme"]), timeout_s=30)
            inject(sim)  # the next answers misbehave
            sim.generate("acme", 30)
            await wait_for(
                lambda: sample(metric, **labels) > before,
                timeout_s=VISIBLE_WITHIN_S,
                what=f"{metric}{labels} to count the fault",
            )
            await reader.until(complete(sim, ["acme"]), timeout_s=30)
            await poller.close()
            await reader.settle()
        assert_exactly_once_in_order(reader.records, sim, ["acme"])
        last = sim.items("acme")[-1][0]
        saved = await saved_cursor(settings)
        assert saved.id == last
        ms, seq = position_key(last)
        # The documented nextid: the id just after the last item served, never beyond it.
        assert position_key(saved.next or last) in ((ms, seq), (ms, seq + 1))


async def test_an_oversized_answer_keeps_memory_bounded(
    make_settings: Callable[..., Settings],
) -> None:
    """A 256 MiB answer against the 1 MiB limit: the poller never holds more than a few MiB."""
    async with TicketmaticSim([ACME], page_size=20) as sim:
        sim.generate("acme", 10)
        settings = hostile_settings(make_settings, sim)
        await ensure(settings)
        poller = Poller(settings)
        before = sample("streamproc_ticketmatic_malformed_pages_total", reason="too_large")
        sim.misbehave("oversized", count=3, size=256 * 1024 * 1024, content_length=False)
        tracemalloc.start()
        try:
            poller.start()
            await wait_for(
                lambda: (
                    sample("streamproc_ticketmatic_malformed_pages_total", reason="too_large")
                    >= before + 3
                ),
                timeout_s=30,
                what="three refused answers",
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await poller.close()
        assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


async def test_creeping_empty_pages_are_paced_and_write_no_cursors(
    make_settings: Callable[..., Settings],
) -> None:
    """Empty pages whose nextid creeps: one request per poll interval, no cursor per page."""
    async with TicketmaticSim([ACME], page_size=20) as sim:
        sim.generate("acme", 5)
        settings = hostile_settings(make_settings, sim)
        await ensure(settings)
        names = Topics.for_prefix(settings.topic_prefix)
        poller = Poller(settings)
        async with TopicReader(settings, names.ticketmatic) as reader:
            poller.start()
            await reader.until(complete(sim, ["acme"]), timeout_s=30)
            async with TopicReader(settings, names.cursors) as cursor_log:
                await cursor_log.settle(0.5)
                written = len(cursor_log.records)
                requests = sim.stats()["acme"]["requests"]
                sim.misbehave("creep", count=1000)
                await asyncio.sleep(2.0)
                asked = sim.stats()["acme"]["requests"] - requests
                await cursor_log.settle(0.5)
                # Before: one request and one cursor transaction per page, ~2,000 a minute.
                assert asked <= 2.0 / POLL_INTERVAL_S + 2
                assert len(cursor_log.records) == written
            await poller.close()


@pytest.mark.parametrize(
    ("status", "reset", "outcome"),
    [
        (503, False, "server_error"),
        (429, False, "rate_limited"),
        (401, False, "auth_error"),
        (None, True, "transport_error"),
    ],
    ids=["503", "429", "401", "reset"],
)
async def test_an_outage_moves_lag_and_headroom_and_readiness(
    make_settings: Callable[..., Settings], status: int | None, reset: bool, outcome: str
) -> None:
    """During an outage lag grows and headroom falls by its length; /readyz names it."""
    async with TicketmaticSim([ACME], page_size=20) as sim:
        sim.generate("acme", 10)
        settings = hostile_settings(make_settings, sim)
        await ensure(settings)
        topic = Topics.for_prefix(settings.topic_prefix).ticketmatic
        poller = Poller(settings)
        retention = settings.ticketmatic.retention_s
        async with TopicReader(settings, topic) as reader:
            poller.start()
            await reader.until(complete(sim, ["acme"]), timeout_s=30)
            await wait_for(lambda: poller.account_reason() is None, what="the account ready")
            failed = sample("streamproc_ticketmatic_polls_total", outcome=outcome)
            outage_s = 3.0
            options: dict[str, Any] = {"reset": True} if reset else {"status": status}
            sim.outage(outage_s, **options)
            await wait_for(
                lambda: sample("streamproc_ticketmatic_polls_total", outcome=outcome) > failed,
                timeout_s=VISIBLE_WITHIN_S,
                what=f"a {outcome} poll counted",
            )
            sim.generate("acme", 10)  # items that arrive during the outage
            await asyncio.sleep(outage_s - 0.5)
            lag = sample("streamproc_ticketmatic_lag_seconds")
            headroom = sample("streamproc_ticketmatic_retention_headroom_seconds")
            since = sample("streamproc_ticketmatic_since_success_seconds")
            reason = poller.account_reason()
            assert lag >= outage_s - 1.0, f"lag {lag} s after {outage_s - 0.5} s of outage"
            assert headroom <= retention - (outage_s - 1.0)
            assert since >= outage_s - 1.0
            assert reason is not None
            assert "no successful eventstream request" in reason or "refused" in reason
            await reader.until(complete(sim, ["acme"]), timeout_s=30)
            await wait_for(lambda: poller.account_reason() is None, what="ready again")
            assert sample("streamproc_ticketmatic_lag_seconds") < 2.0
            await poller.close()
            await reader.settle()
        assert_exactly_once_in_order(reader.records, sim, ["acme"])
