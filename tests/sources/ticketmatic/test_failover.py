"""Real `streamproc poll` processes killed with SIGKILL: nothing lost, nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiokafka import ConsumerRecord
from aiokafka.admin import NewTopic

from streamproc import kafka
from streamproc.config import Settings
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic.cursor import cursor_partition
from streamproc.topics import Topics, ensure
from tests.localkafka import free_port
from tests.procs import Proc, settings_env, wait_for
from tests.sources.ticketmatic.support import (
    TopicReader,
    assert_exactly_once_in_order,
    complete,
    runs,
    tm_settings,
    writers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SESSION_S = "6"  # the broker's minimum group session timeout


def poller(settings: Settings, log: Path) -> tuple[Proc, int]:
    """A `streamproc poll` subprocess and its metrics port."""
    port = free_port()
    env = settings_env(
        settings, STREAMPROC_METRICS_HOST="127.0.0.1", STREAMPROC_METRICS_PORT=str(port)
    )
    return Proc(["poll", "--session-timeout", SESSION_S, "--backoff-base", "0.05"], env, log), port


async def active_accounts(port: int) -> float | None:
    """The poller's `streamproc_ticketmatic_active_accounts`, None while it is not up."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith("streamproc_ticketmatic_active_accounts "):
            return float(line.split()[1])
    return None


async def cursor_topic_with(settings: Settings, partitions: int) -> None:
    """Create the cursors topic with more partitions before `ensure` (which keeps it)."""
    admin = kafka.admin(settings.kafka)
    await admin.start()
    try:
        name = Topics.for_prefix(settings.topic_prefix).cursors
        await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    await ensure(settings)


async def test_sigkill_twice_mid_drain_loses_nothing_and_writes_nothing_twice(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Kill -9 the poller twice while it drains, restart: every item once, in order per key."""
    accounts = [SimAccount("acme", "ak-a", "sk-a"), SimAccount("beta", "ak-b", "sk-b")]
    # Slow, small pages so that the kills land in the middle of the drain.
    async with TicketmaticSim(accounts, page_size=20, latency_s=0.02) as sim:
        sim.generate("acme", 1500, span_s=1800)
        sim.generate("beta", 1000, span_s=1800)
        settings = tm_settings(make_settings, sim, accounts, basic=["beta"])
        await ensure(settings)
        topic = Topics.for_prefix(settings.topic_prefix).ticketmatic
        async with TopicReader(settings, topic) as reader:
            for kill in (1, 2):
                proc, _port = poller(settings, tmp_path / f"poll{kill}.log")
                await reader.until(at_least(700 * kill), timeout_s=45)
                proc.kill()
                assert len(set(reader.ids())) < 2500, "the kill came after the drain"
            proc, _port = poller(settings, tmp_path / "poll3.log")
            try:
                await reader.until(complete(sim, ["acme", "beta"]), timeout_s=45)
                sim.generate("acme", 5)  # and it keeps polling live items
                await reader.until(complete(sim, ["acme", "beta"]), timeout_s=15)
            finally:
                code = proc.terminate()
            await reader.settle()
        assert code == 0, proc.log_path.read_text()
        assert_exactly_once_in_order(reader.records, sim, ["acme", "beta"])


async def test_two_pollers_started_together_never_share_an_account(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two replicas split the accounts by cursor partition; no account is written by both."""
    names = ["acme", "beta", "gamma", "delta", "kappa", "sigma"]
    sides = {n: cursor_partition(n, 2) for n in names}
    assert set(sides.values()) == {0, 1}  # the accounts spread over both partitions
    accounts = [SimAccount(n, f"ak-{n}", f"sk-{n}") for n in names]
    async with TicketmaticSim(accounts, page_size=20, latency_s=0.01) as sim:
        for n in names:
            sim.generate(n, 300, span_s=600)
        settings = tm_settings(make_settings, sim, accounts)
        await cursor_topic_with(settings, 2)
        first, first_port = poller(settings, tmp_path / "a.log")
        second, second_port = poller(settings, tmp_path / "b.log")
        try:
            async with TopicReader(
                settings, Topics.for_prefix(settings.topic_prefix).ticketmatic
            ) as reader:
                await reader.until(complete(sim, names), timeout_s=50)

                async def split() -> bool:
                    counts = [await active_accounts(first_port), await active_accounts(second_port)]
                    return sorted(c or 0 for c in counts) == sorted(
                        float(list(sides.values()).count(p)) for p in (0, 1)
                    )

                await wait_for(split, timeout_s=30, what="both pollers to own their share")
                for n in names:
                    sim.generate(n, 3)
                await reader.until(complete(sim, names), timeout_s=20)
                await reader.settle()
        finally:
            codes = [first.terminate(), second.terminate()]
        assert codes == [0, 0], first.log_path.read_text() + second.log_path.read_text()
        assert_exactly_once_in_order(reader.records, sim, names)
        for n in names:
            blocks = runs(writers(reader.records, n))
            # One writer per account, or one clean handover if the group was still forming.
            assert len(blocks) <= 2, f"{n} written by turns: {blocks}"
        final = {runs(writers(reader.records, n))[-1] for n in names}
        assert len(final) == 2  # in the end, each replica polls its share


async def test_standby_takes_over_within_30_s_after_sigkill(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Kill -9 the active poller: the standby owns the accounts within 30 s and finishes."""
    accounts = [SimAccount("acme", "ak-a", "sk-a"), SimAccount("beta", "ak-b", "sk-b")]
    async with TicketmaticSim(accounts, page_size=20, latency_s=0.02) as sim:
        settings = tm_settings(make_settings, sim, accounts)
        await ensure(settings)  # one cursor partition: one active replica, one standby
        procs = dict([poller(settings, tmp_path / "a.log"), poller(settings, tmp_path / "b.log")])
        by_port = {port: proc for proc, port in procs.items()}
        try:

            async def settled() -> bool:
                if not all([await ready(port) for port in by_port]):
                    return False
                return sorted([await active_accounts(port) or 0 for port in by_port]) == [0, 2]

            await wait_for(settled, timeout_s=30, what="one active poller and one standby")
            owners = [port for port in by_port if await active_accounts(port) == 2]
            [active_port] = owners
            [standby_port] = [port for port in by_port if port != active_port]
            for a in accounts:  # the backlog arrives once the roles are settled
                sim.generate(a.name, 1500, span_s=600)
            topic = Topics.for_prefix(settings.topic_prefix).ticketmatic
            async with TopicReader(settings, topic) as reader:
                await reader.until(at_least(300), timeout_s=30)
                by_port[active_port].kill()
                assert len(reader.records) < 3000, "the kill came after the drain"
                # The bound: another replica takes the accounts over within 30 s.
                await wait_for(
                    lambda: owns(standby_port, 2),
                    timeout_s=30,
                    what="the standby to take the accounts over",
                )
                await reader.until(complete(sim, ["acme", "beta"]), timeout_s=45)
                await reader.settle()
        finally:
            for proc in procs:
                if proc.alive():
                    code = proc.terminate()
        assert code == 0, by_port[standby_port].log_path.read_text()
        assert_exactly_once_in_order(reader.records, sim, ["acme", "beta"])
        survivor = {w for a in accounts for w in runs(writers(reader.records, a.name))[-1:]}
        assert len(survivor) == 1  # the standby finished both accounts


async def ready(port: int) -> bool:
    """/readyz answers 200: joined the group and got an assignment (maybe nothing)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


def at_least(n: int) -> Callable[[list[ConsumerRecord[bytes, bytes]]], bool]:
    return lambda records: len(records) >= n


async def owns(port: int, accounts: int) -> bool:
    return await active_accounts(port) == accounts
