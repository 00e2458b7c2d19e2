"""The poller in-process against the real broker and the simulator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest

from streamproc.config import Settings
from streamproc.errors import RateLimited, ServerError
from streamproc.formats import envelope
from streamproc.formats.ticketmatic import position_key
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic import cursor as cursors
from streamproc.sources.ticketmatic.client import EventstreamClient
from streamproc.sources.ticketmatic.poller import AccountPoller, Fenced
from streamproc.sources.ticketmatic.service import PollService
from streamproc.topics import Topics, ensure
from tests.metrics import exposed, sample
from tests.procs import wait_for
from tests.sources.ticketmatic.support import (
    TopicReader,
    assert_exactly_once_in_order,
    complete,
    tm_settings,
    topic_partitions,
)
from tests.transactions import open_transaction

pytestmark = pytest.mark.kafka

ACME = SimAccount("acme", "ak-acme", "sk-acme")
BETA = SimAccount("beta", "ak-beta", "sk-beta")
PARKED = "streamproc_dead_lettered_total"


async def run_service(settings: Settings, stop: asyncio.Event) -> asyncio.Task[None]:
    """A poll service with short timeouts and backoff, running until ``stop``."""
    service = PollService(
        settings,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        auth_retry_s=0.2,
    )
    return asyncio.create_task(service.run(stop))


def fast_poller(settings: Settings, client: EventstreamClient, poller_id: str) -> AccountPoller:
    return AccountPoller(
        settings,
        settings.ticketmatic.accounts[0],
        client,
        poller_id=poller_id,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )


async def test_drains_a_backlog_exactly_once(make_settings: Callable[..., Settings]) -> None:
    """Two accounts (signed and basic auth): every item lands once, as received, in order."""
    async with TicketmaticSim([ACME, BETA], page_size=40) as sim:
        sim.generate("acme", 500, span_s=600)
        sim.generate("beta", 300, span_s=600)
        settings = tm_settings(make_settings, sim, [ACME, BETA], basic=["beta"])
        await ensure(settings)
        names = Topics.for_prefix(settings.topic_prefix)
        items_before = sample("streamproc_ticketmatic_items_total", account="acme")
        stop = asyncio.Event()
        task = await run_service(settings, stop)
        async with TopicReader(settings, names.ticketmatic) as reader:
            await reader.until(complete(sim, ["acme", "beta"]), timeout_s=45)
            sim.generate("acme", 7)  # live items keep flowing after the backlog
            await reader.until(complete(sim, ["acme", "beta"]), timeout_s=15)
            stop.set()
            await task
            await reader.settle()
        assert_exactly_once_in_order(reader.records, sim, ["acme", "beta"])
        assert sample("streamproc_ticketmatic_items_total", account="acme") - items_before == 507
        # Caught up: the lag is the time since the last poll that found nothing more.
        lag = exposed("streamproc_ticketmatic_lag_seconds", account="acme")
        assert 0 <= lag < 5
        headroom = exposed("streamproc_ticketmatic_retention_headroom_seconds", account="acme")
        assert headroom == pytest.approx(settings.ticketmatic.retention_s - lag, abs=1)
        parts = await topic_partitions(settings, names.cursors)
        saved = await cursors.restore(settings, names.cursors, [tp.partition for tp in parts])
        assert saved["acme"].id == sim.items("acme")[-1][0]
        assert saved["beta"].id == sim.items("beta")[-1][0]


async def test_faults_are_survived_and_bad_items_parked(
    make_settings: Callable[..., Settings],
) -> None:
    """429, 5xx, a malformed page, an item without id: good items once, the bad one parked."""
    async with TicketmaticSim([ACME], page_size=25) as sim:
        sim.generate("acme", 60)
        sim.add_items("acme", [b'{"ts":"2024-05-01T09:30:00","type":"webshop:pageview"}'])
        sim.generate("acme", 60)
        sim.fail_next(3, 429, retry_after=0.05)
        sim.fail_next(3, 503)
        sim.fail_next(1, 200, body=b"<html>maintenance</html>")
        settings = tm_settings(make_settings, sim, [ACME])
        await ensure(settings)
        names = Topics.for_prefix(settings.topic_prefix)
        before = {
            o: sample("streamproc_ticketmatic_polls_total", account="acme", outcome=o)
            for o in ("rate_limited", "server_error", "malformed")
        }
        parked_before = sample(PARKED, stage="poll", source="ticketmatic", reason="invalid_item")
        stop = asyncio.Event()
        task = await run_service(settings, stop)
        broken_id = sim.items("acme")[60][0]
        good = [(i, raw) for i, raw in sim.items("acme") if i != broken_id]
        async with TopicReader(settings, names.ticketmatic) as reader:
            await reader.until(lambda rs: len(rs) >= len(good), timeout_s=45)
            async with TopicReader(settings, names.dlq) as dlq:
                await dlq.until(lambda rs: len(rs) >= 1, timeout_s=10)
            stop.set()
            await task
            await reader.settle()
        assert sorted(reader.ids()) == sorted(i for i, _ in good)
        assert len(set(reader.ids())) == len(good)
        [letter] = dlq.records
        assert letter.value == sim.items("acme")[60][1]
        assert (envelope.header(letter.headers, envelope.H_REASON) or "").startswith(
            "invalid_item: "
        )
        assert (
            sample("streamproc_ticketmatic_polls_total", account="acme", outcome="rate_limited")
            - before["rate_limited"]
            == 3
        )
        assert (
            sample("streamproc_ticketmatic_polls_total", account="acme", outcome="server_error")
            - before["server_error"]
            == 3
        )
        assert (
            sample("streamproc_ticketmatic_polls_total", account="acme", outcome="malformed")
            - before["malformed"]
            == 1
        )
        # Counted once its page's transaction committed.
        parked = sample(PARKED, stage="poll", source="ticketmatic", reason="invalid_item")
        assert parked - parked_before == 1


async def test_refused_credentials_do_not_hold_up_another_account(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """An account with a wrong secret is counted and logged by name; the other drains."""
    wrong = SimAccount("beta", "ak-beta", "not-the-secret")
    async with TicketmaticSim([ACME, BETA], page_size=50) as sim:
        sim.generate("acme", 200)
        sim.generate("beta", 10)
        settings = tm_settings(make_settings, sim, [ACME, wrong])
        await ensure(settings)
        before = sample("streamproc_ticketmatic_polls_total", account="beta", outcome="auth_error")
        stop = asyncio.Event()
        task = await run_service(settings, stop)
        async with TopicReader(
            settings, Topics.for_prefix(settings.topic_prefix).ticketmatic
        ) as reader:
            await reader.until(complete(sim, ["acme"]), timeout_s=45)
            await wait_for(
                lambda: (
                    sample(
                        "streamproc_ticketmatic_polls_total", account="beta", outcome="auth_error"
                    )
                    - before
                    >= 2
                ),
                what="two refused polls of beta",
            )
            stop.set()
            await task
        assert set(reader.ids("acme")) == {i for i, _ in sim.items("acme")}
        assert reader.ids("beta") == []
    refusals = [
        r for r in caplog.records if r.levelno == logging.ERROR and "beta" in r.getMessage()
    ]
    assert refusals
    assert "credentials refused (HTTP 401)" in refusals[0].getMessage()
    assert "not-the-secret" not in caplog.text


async def test_retention_gap_is_detected_and_counted(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """A poller away longer than the retention logs data loss with the gap and carries on."""
    # 4 h in 2 s: the simulator and the poller share the shortened retention.
    async with TicketmaticSim([ACME], page_size=50, time_scale=7200) as sim:
        sim.generate("acme", 20)
        settings = tm_settings(make_settings, sim, [ACME], retention_s=2.0, retry_after_max_s=1.0)
        await ensure(settings)
        topic = Topics.for_prefix(settings.topic_prefix).ticketmatic
        gaps = sample("streamproc_ticketmatic_retention_gaps_total", account="acme")
        gap_s = sample("streamproc_ticketmatic_retention_gap_seconds_total", account="acme")
        async with TopicReader(settings, topic) as reader:
            stop = asyncio.Event()
            task = await run_service(settings, stop)
            await reader.until(complete(sim, ["acme"]), timeout_s=30)
            stop.set()
            await task
            assert (
                sample("streamproc_ticketmatic_retention_gaps_total", account="acme") == gaps
            )  # no gap while it kept up
            await asyncio.sleep(3.5)  # the poller is down for longer than the retention
            fresh = sim.generate("acme", 5)
            assert sim.stats()["acme"]["dropped"] == 20
            stop = asyncio.Event()
            task = await run_service(settings, stop)
            await reader.until(lambda rs: set(fresh) <= set(reader.ids()), timeout_s=30)
            stop.set()
            await task
        assert sample("streamproc_ticketmatic_retention_gaps_total", account="acme") == gaps + 1
        assert (
            sample("streamproc_ticketmatic_retention_gap_seconds_total", account="acme") - gap_s
            >= 1.0
        )
        assert len(reader.ids()) == 25
    assert any("DATA LOSS" in r.getMessage() and "acme" in r.getMessage() for r in caplog.records)


async def test_a_second_poller_fences_the_first(make_settings: Callable[..., Settings]) -> None:
    """Two pollers of one account (a zombie): the newer fences the older; nothing twice."""
    async with TicketmaticSim([ACME], page_size=10, latency_s=0.01) as sim:
        sim.generate("acme", 400)
        settings = tm_settings(make_settings, sim, [ACME])
        await ensure(settings)
        async with EventstreamClient(sim.url) as client:
            old = fast_poller(settings, client, "old")
            new = fast_poller(settings, client, "new")
            stop = asyncio.Event()
            old_task = asyncio.create_task(old.run(stop))
            await wait_for(lambda: old.items_written >= 50, what="the first poller to write")
            new_task = asyncio.create_task(new.run(stop))
            with pytest.raises(Fenced):
                await asyncio.wait_for(old_task, timeout=30)
            async with TopicReader(
                settings, Topics.for_prefix(settings.topic_prefix).ticketmatic
            ) as reader:
                await reader.until(complete(sim, ["acme"]), timeout_s=30)
                stop.set()
                await new_task
                await reader.settle()
        assert_exactly_once_in_order(reader.records, sim, ["acme"])
        assert new.items_written > 0


def test_retry_delays_follow_the_answer() -> None:
    """429 waits its Retry-After; 5xx backs off exponentially, capped."""
    from streamproc.config import Secret, TicketmaticAccount

    settings = Settings()
    account = TicketmaticAccount(name="acme", access_key="ak", secret_key=Secret("sk"))
    poller = AccountPoller(
        settings,
        account,
        EventstreamClient("http://127.0.0.1:1"),
        poller_id="t",
        backoff_base_s=1,
        backoff_max_s=8,
    )
    assert poller._failed(RateLimited(429, "", 7.0)) == 7.0
    # A Retry-After over ticketmatic.retry_after_max_s (300 s) waits the cap, not forever.
    assert poller._failed(RateLimited(429, "", 99999999.0)) == 300.0
    delays = [poller._failed(ServerError(503)) for _ in range(8)]
    assert all(d <= 8 for d in delays)
    assert max(delays) >= 4  # grew from the 1 s base


async def test_start_ts_and_eventtypes_are_honoured(make_settings: Callable[..., Settings]) -> None:
    """A new account starts at its configured ts; the eventtypes filter limits what comes."""
    async with TicketmaticSim([ACME], page_size=50) as sim:
        sim.generate("acme", 400, span_s=600)
        settings = tm_settings(
            make_settings, sim, [ACME], eventtypes=["webshop:pageview", "webshop:checkout_confirm"]
        )
        start = datetime.now(UTC) - timedelta(seconds=300)
        account = msgspec.structs.replace(
            settings.ticketmatic.accounts[0], start_ts=start.strftime("%Y-%m-%dT%H:%M:%S+0000")
        )
        settings = msgspec.structs.replace(
            settings,
            ticketmatic=msgspec.structs.replace(settings.ticketmatic, accounts=[account]),
        )
        await ensure(settings)
        wanted = [
            i
            for i, raw in sim.items("acme")
            if position_key(i)[0] >= int(start.timestamp()) * 1000
            and orjson.loads(raw)["type"] in ("webshop:pageview", "webshop:checkout_confirm")
        ]
        assert 0 < len(wanted) < 200
        stop = asyncio.Event()
        task = await run_service(settings, stop)
        topic = Topics.for_prefix(settings.topic_prefix).ticketmatic
        async with TopicReader(settings, topic) as reader:
            await reader.until(lambda rs: len(rs) >= len(wanted), timeout_s=30)
            stop.set()
            await task
            await reader.settle()
        assert sorted(reader.ids(), key=position_key) == wanted


async def test_a_hanging_transaction_on_the_cursors_does_not_stop_the_account(
    make_settings: Callable[..., Settings],
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transaction left open on the account's cursor partition: polled after the settle."""
    async with TicketmaticSim([ACME], page_size=50) as sim:
        sim.generate("acme", 40)
        settings = tm_settings(make_settings, sim, [ACME])
        settings = msgspec.structs.replace(
            settings, kafka=msgspec.structs.replace(settings.kafka, transaction_timeout_ms=3000)
        )
        await ensure(settings)
        names = Topics.for_prefix(settings.topic_prefix)
        partitions = await topic_partitions(settings, names.cursors)
        partition = cursors.cursor_partition("acme", len(partitions))
        async with open_transaction(
            settings.kafka, unique("hang"), names.cursors, partition, key=b"other", value=b"{}"
        ):
            stop = asyncio.Event()
            task = await run_service(settings, stop)
            async with TopicReader(settings, names.ticketmatic) as reader:
                await reader.until(complete(sim, ["acme"]), timeout_s=60)
                stop.set()
                await task
                await reader.settle()
            assert_exactly_once_in_order(reader.records, sim, ["acme"])
    assert any("is pinned at offset" in r.getMessage() for r in caplog.records)
