"""The deliverer against the simulator and a real broker: answers, offsets, rebalance, outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from streamproc import topics
from streamproc.config import MParticleSettings, Settings
from streamproc.dlq import H_STAGE
from streamproc.formats import envelope
from streamproc.health import Health
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.mparticle_control import Control
from streamproc.sinks.mparticle.deliverer import Deliverer
from streamproc.topics import Topics
from tests.metrics import sample
from tests.procs import wait_for
from tests.sinks.support import (
    API_KEY,
    API_SECRET,
    all_committed,
    committed,
    deliver_settings,
    encode,
    make_batch,
    produce,
    request_id,
)
from tests.topics import read_topic

pytestmark = pytest.mark.kafka

REASONS = ("batch_too_large", "not_json_object")


@pytest.fixture
def schema(shared_reference: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (shared_reference / "mparticle" / "mparticle-eventsapi-schema.json").read_bytes()
    )
    return data


@asynccontextmanager
async def running(
    settings: Settings, health: Health | None = None, **kwargs: Any
) -> AsyncIterator[Deliverer]:
    """A deliverer with short retries and polls; ``kwargs`` that name an ``mparticle``
    setting change the settings, the rest are the deliverer's own pacing options."""
    mp: dict[str, Any] = {"backoff_base_s": 0.01, "auth_retry_s": 0.1, "shutdown_timeout_s": 5.0}
    options: dict[str, Any] = {"commit_interval_s": 0.1, "idle_poll_s": 0.1, "blocked_poll_s": 0.2}
    for name, value in kwargs.items():
        (mp if name in MParticleSettings.__struct_fields__ else options)[name] = value
    settings = msgspec.structs.replace(
        settings, mparticle=msgspec.structs.replace(settings.mparticle, **mp)
    )
    deliverer = Deliverer(settings, health=health, **options)
    async with deliverer:
        yield deliverer
    assert deliverer._main is None


def e2e_bucket(le: str) -> float:
    return sample("streamproc_end_to_end_seconds_bucket", source="ticketure", le=le)


async def test_delivers_every_batch_unchanged_and_commits(
    kafka_settings: Settings, schema: dict[str, Any]
) -> None:
    """202: every batch reaches mParticle as produced, and every offset is committed."""
    values = [encode(make_batch(i)) for i in range(250)]
    e2e = {le: e2e_bucket(le) for le in ("60.0", "+Inf")}
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET, schema=schema) as sim:
        settings = deliver_settings(kafka_settings, sim)
        await produce(settings, values)
        async with running(settings) as d:
            await wait_for(lambda: sim.stats.batches_stored == 250, 30, what="all batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
        # Every batch observed once, from the item times taken as its request was packed.
        assert {le: e2e_bucket(le) - e2e[le] for le in e2e} == {"60.0": 250, "+Inf": 250}
        assert sorted(orjson.dumps(b) for b in sim.batches()) == sorted(values)
        assert sim.stats.duplicates == 0
        assert max(len(orjson.loads(orjson.dumps(b))) for b in sim.batches()) > 0
        assert sample("streamproc_deliver_in_flight") == 0


async def test_400_dead_letters_the_bad_batches_and_delivers_the_rest(
    kafka_settings: Settings, schema: dict[str, Any]
) -> None:
    """400: the request is split, the bad batches go to the DLQ with mParticle's error."""
    bad = {5, 41, 42}
    values = [
        encode(make_batch(i, environment="staging" if i in bad else "development"))
        for i in range(80)
    ]
    e2e = e2e_bucket("+Inf")
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET, schema=schema) as sim:
        settings = deliver_settings(kafka_settings, sim)
        await produce(settings, values)
        async with running(settings) as d:
            await wait_for(lambda: sim.stats.batches_stored == 77, 30, what="good batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
        parked = await read_topic(settings, Topics.for_prefix(settings.topic_prefix).dlq, 3)
    assert e2e_bucket("+Inf") - e2e == 77  # after the splits: each delivered batch once
    assert sorted(r.value for r in parked) == sorted(values[i] for i in bad)
    for record in parked:
        reason = envelope.header(record.headers, envelope.H_REASON) or ""
        assert reason.startswith("rejected_by_mparticle: HTTP 400")
        assert "environment" in reason
        assert envelope.header(record.headers, H_STAGE) == "deliver"
        assert (
            envelope.header(record.headers, envelope.H_ORIGIN_TOPIC)
            == Topics.for_prefix(settings.topic_prefix).batches
        )
    stored = {b["source_request_id"] for b in sim.batches()}
    assert stored == {request_id(i) for i in range(80) if i not in bad}


async def test_unpostable_records_are_dead_lettered(kafka_settings: Settings) -> None:
    """A batch over 128 KiB, or a value that is not a JSON object, is parked with the reason."""
    values = [encode(make_batch(0)), encode(make_batch(1, pad=130 * 1024)), b"[1,2]"]
    labels = {"stage": "deliver", "source": "ticketure"}
    before = {r: sample("streamproc_dead_lettered_total", **labels, reason=r) for r in REASONS}
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
        settings = deliver_settings(kafka_settings, sim)
        await produce(settings, values)
        async with running(settings) as d:
            await wait_for(lambda: sim.stats.batches_stored == 1, 30, what="good batch")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
        parked = await read_topic(settings, Topics.for_prefix(settings.topic_prefix).dlq, 2)
    reasons = sorted(
        (envelope.header(r.headers, envelope.H_REASON) or "").split(":")[0] for r in parked
    )
    assert reasons == ["batch_too_large", "not_json_object"]
    for reason in REASONS:  # counted once each, under the batch's source
        counted = sample("streamproc_dead_lettered_total", **labels, reason=reason)
        assert counted == before[reason] + 1


async def test_auth_failure_pauses_commits_nothing_and_resumes(kafka_settings: Settings) -> None:
    """401/403: not ready, metric 1, nothing stored or committed; all flows once fixed."""
    values = [encode(make_batch(i)) for i in range(30)]
    health = Health()
    async with MParticleSim(api_key="someone-else", api_secret=API_SECRET) as sim:
        settings = deliver_settings(kafka_settings, sim)
        await produce(settings, values)
        async with running(settings, health) as d:
            await wait_for(lambda: sim.stats.answers.get("403", 0) >= 3, 30, what="403s")
            assert not health.ready()
            assert sample("streamproc_deliver_auth_failed") == 1
            await asyncio.sleep(0.5)  # several commit intervals: none may move
            assert await committed(settings, d.group_id) == {}
            assert sim.stats.batches_stored == 0
            sim.set_credentials(API_KEY, API_SECRET)
            await wait_for(lambda: sim.stats.batches_stored == 30, 30, what="delivery resumed")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
            assert health.ready()
            assert sample("streamproc_deliver_auth_failed") == 0
    assert await read_topic(settings, Topics.for_prefix(settings.topic_prefix).dlq) == []


async def test_429_5xx_and_timeouts_lose_nothing(kafka_settings: Settings) -> None:
    """429 with and without Retry-After, 500/503, then timeouts: retried, all delivered."""
    rate_limited = sample("streamproc_deliver_retries_total", reason="rate_limited")
    server_error = sample("streamproc_deliver_retries_total", reason="server_error")
    transport = sample("streamproc_deliver_retries_total", reason="transport")
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
        settings = deliver_settings(kafka_settings, sim, request_timeout_s=0.3)
        sim.fail_next(429, count=2, retry_after_s=0.05)
        sim.fail_next(429, count=2)
        sim.fail_next(503, count=3)
        sim.fail_next(500, count=1)
        await produce(settings, [encode(make_batch(i)) for i in range(60)])
        async with running(settings) as d:
            await wait_for(lambda: sim.stats.batches_stored == 60, 30, what="first batches")
            assert sample("streamproc_deliver_retries_total", reason="rate_limited") >= (
                rate_limited + 4
            )
            assert sample("streamproc_deliver_retries_total", reason="server_error") >= (
                server_error + 4
            )
            sim.control(Control(latency_s=0.5))  # past the client's 0.3 s timeout
            await produce(settings, [encode(make_batch(i)) for i in range(60, 120)])
            await wait_for(
                lambda: (
                    sample("streamproc_deliver_retries_total", reason="transport") >= transport + 2
                ),
                30,
                what="timeouts",
            )
            sim.control(Control(latency_s=0.0))
            await wait_for(lambda: sim.stats.batches_stored == 120, 30, what="all batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
    answers = sim.stats.answers
    assert (answers["429"], answers["503"], answers["500"]) == (4, 3, 1)
    assert sim.stats.duplicates_differing == 0


async def test_429_storm_is_ridden_out(kafka_settings: Settings) -> None:
    """Far past mParticle's rate, the deliverer backs off and delivers everything."""
    retries = sample("streamproc_deliver_retries_total", reason="rate_limited")
    values = [encode(make_batch(i)) for i in range(600)]
    async with MParticleSim(
        api_key=API_KEY, api_secret=API_SECRET, rate_limit_batches_per_s=150, retry_after_s=None
    ) as sim:
        settings = deliver_settings(kafka_settings, sim, rate_limit_batches_per_s=5000.0)
        await produce(settings, values)
        async with running(settings) as d:
            await wait_for(lambda: sim.stats.batches_stored == 600, 50, what="all batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
    storm = sim.stats.answers.get("429", 0)
    assert storm >= 3
    assert sample("streamproc_deliver_retries_total", reason="rate_limited") == retries + storm
    assert sim.stats.duplicates == 0


async def test_stop_commits_exactly_the_delivered_prefix(kafka_settings: Settings) -> None:
    """After stop() every committed offset points past batches mParticle has; none beyond."""
    values = [encode(make_batch(i)) for i in range(400)]
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET, latency_s=0.2) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=2)
        placed = await produce(settings, values)
        async with running(settings, shutdown_timeout_s=0.05) as d:
            await wait_for(lambda: sim.stats.batches_stored >= 100, 30, what="some batches")
        stored = {b["source_request_id"] for b in sim.batches()}
        commits = await committed(settings, d.group_id)
    assert len(stored) < 400
    for i, (partition, offset) in enumerate(placed):
        if offset < commits.get(partition, 0):
            assert request_id(i) in stored, f"batch {i} committed but never delivered"


async def test_rebalance_loses_nothing(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """A second member joining mid-delivery: every batch lands; repeats are same-id only."""
    values = [encode(make_batch(i)) for i in range(600)]
    group = unique("deliver")
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET, latency_s=0.05) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=2)
        await produce(settings, values)
        async with running(settings, group_id=group):
            await wait_for(lambda: sim.stats.batches_stored >= 100, 30, what="first batches")
            async with running(settings, group_id=group):
                await wait_for(lambda: sim.stats.batches_stored == 600, 60, what="all batches")
                await wait_for(lambda: all_committed(settings, group), 20, what="commits")
    assert sim.stats.duplicates_differing == 0
    assert sim.stats.batches_received == 600 + sim.stats.duplicates


async def test_blocked_delivery_keeps_its_group_membership(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Blocked past max.poll.interval.ms, the member pauses and polls: no rebalance."""
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=1)
        await produce(settings, [encode(make_batch(i)) for i in range(300)])
        await sim.stop()
        options = {"max_poll_interval_ms": 2000}
        with caplog.at_level(logging.INFO, logger="streamproc.sinks"):
            async with running(settings, consumer_options=options) as d:
                await wait_for(lambda: d._paused, 20, what="fetching paused")
                await asyncio.sleep(5)  # 2.5 times max.poll.interval.ms
                await sim.start()
                await wait_for(lambda: sim.stats.batches_stored == 300, 30, what="all batches")
                await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
    logged = [r.getMessage() for r in caplog.records]
    assert any("fetching paused" in line for line in logged)
    assert [line for line in logged if "revoked" in line] == []


async def test_read_ahead_is_bounded_while_mparticle_is_away(kafka_settings: Settings) -> None:
    """Requests packed ahead never exceed ``read_ahead``; once mParticle is back, all land."""
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=1)
        await produce(settings, [encode(make_batch(i)) for i in range(1000)])
        await sim.stop()
        async with running(settings, read_ahead=3) as d:
            sizes = []
            for _ in range(150):  # 1.5 s: well past blocked_poll_s, fetching paused
                sizes.append(len(d._ready))
                await asyncio.sleep(0.01)
            assert 1 <= max(sizes) <= 3
            await sim.start()
            await wait_for(lambda: sim.stats.batches_stored == 1000, 30, what="all batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
    assert sim.stats.duplicates == 0


@pytest.mark.slow
async def test_60s_outage_then_recovery_loses_nothing(kafka_settings: Settings) -> None:
    """mParticle unreachable for 60 s (refused, then 503s): nothing lost, all delivered."""
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
        settings = deliver_settings(kafka_settings, sim, backoff_max_s=2.0)
        await produce(settings, [encode(make_batch(i)) for i in range(100)])
        async with running(settings, blocked_poll_s=0.5) as d:
            await wait_for(lambda: sim.stats.batches_stored == 100, 30, what="first batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
            await sim.stop()
            await produce(settings, [encode(make_batch(i)) for i in range(100, 400)])
            await asyncio.sleep(30)
            before = await committed(settings, d.group_id)
            await sim.start()
            sim.control(Control(outage="503"))
            await asyncio.sleep(30)
            assert await committed(settings, d.group_id) == before
            assert sim.stats.batches_stored == 100
            sim.control(Control(outage=None))
            await wait_for(lambda: sim.stats.batches_stored == 400, 30, what="recovery")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
    assert {b["source_request_id"] for b in sim.batches()} == {request_id(i) for i in range(400)}
    assert sim.stats.answers["503"] >= 5


async def test_topics_exist_for_the_prefix(kafka_settings: Settings) -> None:
    """The fixture's topics include the batches and dead-letter topics the deliverer uses."""
    names = {row["topic"] for row in await topics.describe(kafka_settings) if row["exists"]}
    t = Topics.for_prefix(kafka_settings.topic_prefix)
    assert {t.batches, t.dlq} <= names


def test_the_mparticle_settings_reach_the_deliverer(kafka_settings: Settings) -> None:
    """Built from settings alone (as `streamproc run` builds it), it takes every retry setting."""
    sim = MParticleSim(api_key=API_KEY, api_secret=API_SECRET)
    settings = deliver_settings(
        kafka_settings,
        sim,
        backoff_base_s=0.3,
        auth_retry_s=5.0,
        max_retries=3,
        shutdown_timeout_s=4.0,
        retry_after_max_s=7.0,
    )
    deliverer = Deliverer(settings)
    assert deliverer.sender.backoff_base_s == 0.3
    assert deliverer.sender.retry_after_max_s == 7.0
    assert deliverer.sender.auth_retry_s == 5.0
    assert deliverer.sender.max_retries == 3
    assert deliverer.shutdown_timeout_s == 4.0
    unlimited = Deliverer(deliver_settings(kafka_settings, sim, max_retries=0))
    assert unlimited.sender.max_retries is None  # 0: retried without limit


async def test_a_429_pauses_every_slot_and_the_refused_request_goes_first(
    kafka_settings: Settings,
) -> None:
    """After one slot's 429 (Retry-After 2), no slot sends for 2 s; the refused one goes first."""
    values = [encode(make_batch(i)) for i in range(3000)]
    async with MParticleSim(
        api_key=API_KEY, api_secret=API_SECRET, latency_s=0.2, rate_limit_batches_per_s=None
    ) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=4)
        await produce(settings, values)
        async with running(settings) as d:
            await wait_for(lambda: sim.stats.in_flight >= 3, 30, 0.01, "several slots busy")
            sim.fail_next(429, retry_after_s=2)
            await wait_for(lambda: sim.stats.answers.get("429", 0) == 1, 10, 0.01, "the 429")
            await asyncio.sleep(1.0)
            assert d.limiter.paused_for() > 0.5
            assert sim.stats.in_flight == 0  # no slot sends while paused
            await wait_for(lambda: sim.stats.batches_stored == 3000, 60, what="all batches")
            await wait_for(lambda: all_committed(settings, d.group_id), 20, what="commits")
    arrivals = sorted(sim.requests(), key=lambda a: a.arrived_at)
    (refused,) = [a for a in arrivals if a.status == "429"]
    after = [a for a in arrivals if a.arrived_at > refused.answered_at]
    assert after[0].ids == refused.ids
    assert after[0].status == "202"
    assert after[0].arrived_at - refused.answered_at >= 2.0
    # Other slots had requests in flight as the 429 came: those were answered as usual.
    others = [a for a in arrivals if a.arrived_at < refused.answered_at < a.answered_at]
    assert others
    assert {a.status for a in others} == {"202"}
    assert sim.stats.duplicates == 0
