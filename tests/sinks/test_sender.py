"""Every mParticle answer path, for one client request and for a request carried to its end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from streamproc.errors import AuthError, BadRequest, RateLimited, ServerError, TransportError
from streamproc.health import Health
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.mparticle_control import Control
from streamproc.sinks.mparticle.batcher import Batch, Record, request_body
from streamproc.sinks.mparticle.client import MParticleClient
from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter
from streamproc.sinks.mparticle.sender import AUTH_COMPONENT, Sender, item_times
from tests.metrics import sample
from tests.procs import wait_for
from tests.sinks.support import API_KEY, API_SECRET, encode, make_batch, request_id


def batches(n: int, bad: Collection[int] = ()) -> list[Batch]:
    return [
        Record(
            "batches",
            0,
            i,
            None,
            encode(make_batch(i, environment="staging" if i in bad else "development")),
            [("item_time_ms", b"1700000000000"), ("source", b"ticketure")],
        )
        for i in range(n)
    ]


@pytest.fixture
def schema(shared_reference: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (shared_reference / "mparticle" / "mparticle-eventsapi-schema.json").read_bytes()
    )
    return data


@pytest_asyncio.fixture(loop_scope="function")
async def sim(schema: dict[str, Any]) -> AsyncIterator[MParticleSim]:
    async with MParticleSim(
        api_key=API_KEY, api_secret=API_SECRET, schema=schema, rate_limit_batches_per_s=None
    ) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="function")
async def client(sim: MParticleSim) -> AsyncIterator[MParticleClient]:
    async with MParticleClient(sim.url, API_KEY, API_SECRET, timeout_s=2.0) as c:
        yield c


class Parked:
    """Collects dead-lettered batches as the deliverer would write them."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, str]] = []

    async def __call__(self, batch: Batch, code: str, reason: str) -> None:
        self.items.append((batch.offset, code, reason))


def sender(client: MParticleClient, health: Health | None = None, **kwargs: Any) -> Sender:
    options: dict[str, Any] = {"backoff_base_s": 0.001, "backoff_max_s": 0.01, "auth_retry_s": 0.05}
    options.update(kwargs)
    return Sender(client, AdaptiveRateLimiter(10_000), health=health or Health(), **options)


async def test_client_maps_every_answer(sim: MParticleSim, client: MParticleClient) -> None:
    """202 is a value with the percentage; 400/401/403/429/5xx are the matching errors."""
    body = request_body(batches(2))
    sim.set_rate_limit(1000, retry_after_s=3)
    answer = await client.post_bulk(body)
    assert answer.status == 202
    assert answer.percent_used is not None
    with pytest.raises(BadRequest) as bad:
        await client.post_bulk(request_body(batches(2, bad={1})))
    assert "environment" in bad.value.body
    sim.fail_next(429, retry_after_s=3)
    with pytest.raises(RateLimited) as limited:
        await client.post_bulk(body)
    assert limited.value.retry_after == 3
    sim.fail_next(503)
    with pytest.raises(ServerError):
        await client.post_bulk(body)
    sim.set_credentials(API_KEY, "other")
    with pytest.raises(AuthError) as refused:
        await client.post_bulk(body)
    assert refused.value.status == 403


async def test_client_timeouts_and_refused_connections(sim: MParticleSim) -> None:
    """A timeout and a refused connection are TransportErrors (retriable)."""
    before = sample("streamproc_deliver_requests_total", status_class="error")
    async with MParticleClient(sim.url, API_KEY, API_SECRET, timeout_s=0.2) as client:
        sim.control(Control(latency_s=1.0))
        with pytest.raises(TransportError):
            await client.post_bulk(b"[]")
        sim.control(Control(latency_s=0.0))
        await sim.stop()
        with pytest.raises(TransportError) as refused:
            await client.post_bulk(b"[]")
        assert refused.value.retriable
    assert sample("streamproc_deliver_requests_total", status_class="error") == before + 2


async def test_202_delivers_and_observes_end_to_end(
    sim: MParticleSim, client: MParticleClient
) -> None:
    """Accepted batches are counted as delivered and their end-to-end latency observed."""
    delivered = sample("streamproc_deliver_batches_total", outcome="delivered")
    e2e = sample("streamproc_end_to_end_seconds_count", source="ticketure")
    parked = Parked()
    await sender(client).send(batches(5), parked)
    assert sim.stats.batches_stored == 5
    assert parked.items == []
    assert sample("streamproc_deliver_batches_total", outcome="delivered") == delivered + 5
    assert sample("streamproc_end_to_end_seconds_count", source="ticketure") == e2e + 5


async def test_end_to_end_buckets_each_batch_by_its_own_source_and_time(
    sim: MParticleSim, client: MParticleClient
) -> None:
    """Mixed sources and item times in one request: each batch in its own bucket and sum."""
    now_ms = int(time.time() * 1000)
    ages_s = {"ticketmatic": [0.0, 2 * 3600, 5 * 3600], "ticketure": [20.0, 20.0]}
    headers = [
        [("source", source.encode()), ("item_time_ms", str(int(now_ms - age * 1000)).encode())]
        for source, ages in ages_s.items()
        for age in ages
    ]
    headers.append([("source", b"ticketure"), ("item_time_ms", b"not a time")])
    headers.append([("source", b"ticketure")])  # no item time: delivered, not observed
    request = [
        Record("batches", 0, i, None, encode(make_batch(i)), h) for i, h in enumerate(headers)
    ]

    def e2e(kind: str, source: str, **labels: str) -> float:
        return sample(f"streamproc_end_to_end_seconds_{kind}", source=source, **labels)

    before = {
        (source, le): e2e("bucket", source, le=le)
        for source in ages_s
        for le in ("1.0", "30.0", "14400.0", "+Inf")
    }
    sums = {source: e2e("sum", source) for source in ages_s}
    await sender(client).send(request, Parked())
    assert sim.stats.batches_stored == 7

    def added(source: str, le: str) -> float:
        return e2e("bucket", source, le=le) - before[source, le]

    assert [added("ticketmatic", le) for le in ("1.0", "30.0", "14400.0", "+Inf")] == [1, 1, 2, 3]
    assert [added("ticketure", le) for le in ("1.0", "30.0", "14400.0", "+Inf")] == [0, 2, 2, 2]
    assert e2e("sum", "ticketmatic") - sums["ticketmatic"] == pytest.approx(7 * 3600, abs=5)
    assert e2e("sum", "ticketure") - sums["ticketure"] == pytest.approx(40, abs=5)


def test_item_times_per_source_sorted_without_broken_ones() -> None:
    """What the deliverer takes as it packs a request: per source, sorted epoch ms."""
    headers = [
        [("source", b"ticketure"), ("item_time_ms", b"30")],
        [("item_time_ms", b"20"), ("source", b"ticketmatic")],
        [("source", b"ticketure"), ("item_time_ms", b"10")],
        [("source", b"ticketure"), ("item_time_ms", b"-5")],
        [("source", b"ticketmatic"), ("item_time_ms", b"\xc2\xb2")],  # a superscript two
        [("item_time_ms", b"40")],
        [("source", b"ticketmatic")],
        [("source", b"ticketmatic"), ("item_time_ms", b"9" * 5000)],  # int() refuses it
    ]
    request = [Record("batches", 0, i, None, b"{}", h) for i, h in enumerate(headers)]
    assert item_times(request) == {b"ticketure": [10, 30], b"ticketmatic": [20], b"unknown": [40]}


async def test_400_splits_and_dead_letters_only_the_bad(
    sim: MParticleSim, client: MParticleClient
) -> None:
    """A 400 is bisected: the bad batches are parked with mParticle's answer, the rest land."""
    parked = Parked()
    e2e = sample("streamproc_end_to_end_seconds_count", source="ticketure")
    await sender(client).send(batches(40, bad={3, 27}), parked)
    assert sample("streamproc_end_to_end_seconds_count", source="ticketure") == e2e + 38
    assert [offset for offset, _, _ in parked.items] == [3, 27]
    assert all(code == "rejected_by_mparticle" for _, code, _ in parked.items)
    assert all("HTTP 400" in r and "environment" in r for _, _, r in parked.items)
    stored = {b["source_request_id"] for b in sim.batches()}
    assert stored == {request_id(i) for i in range(40) if i not in (3, 27)}
    assert sim.stats.duplicates == 0


@pytest.mark.parametrize("retry_after", [0.01, None])
async def test_429_is_retried_and_lowers_the_rate(
    sim: MParticleSim, client: MParticleClient, retry_after: float | None
) -> None:
    """429 (with or without Retry-After) is retried until 202, and the rate goes down."""
    retries = sample("streamproc_deliver_retries_total", reason="rate_limited")
    sim.fail_next(429, count=3, retry_after_s=retry_after)
    s = sender(client)
    await s.send(batches(3), Parked())
    assert sim.stats.batches_stored == 3
    assert sim.stats.answers == {"429": 3, "202": 1}
    assert s.limiter.rate < 10_000
    assert sample("streamproc_deliver_retries_total", reason="rate_limited") == retries + 3


async def test_5xx_is_retried_without_loss(sim: MParticleSim, client: MParticleClient) -> None:
    """500 and 503 answers are retried with backoff until mParticle takes the request."""
    sim.fail_next(500, count=2)
    sim.fail_next(503, count=3)
    await sender(client).send(batches(4), Parked())
    assert sim.stats.answers == {"500": 2, "503": 3, "202": 1}
    assert sim.stats.batches_stored == 4


async def test_timeout_is_retried_and_repeat_is_a_duplicate(sim: MParticleSim) -> None:
    """A timed-out request that landed anyway is sent again unchanged: a mere duplicate."""
    async with MParticleClient(sim.url, API_KEY, API_SECRET, timeout_s=0.3) as client:
        sim.control(Control(latency_s=0.6))
        s = sender(client)
        task = asyncio.create_task(s.send(batches(3), Parked()))
        await wait_for(lambda: sim.stats.answers.get("202", 0) >= 1, 10, 0.02, "a late 202")
        sim.control(Control(latency_s=0.0))
        await asyncio.wait_for(task, 10)
    assert sim.stats.batches_stored == 3
    assert sim.stats.duplicates >= 3
    assert sim.stats.duplicates_differing == 0


async def test_dropped_connections_are_retried(sim: MParticleSim, client: MParticleClient) -> None:
    """Connections closed without an answer are retried like any transport failure."""
    sim.control(Control(outage="drop"))
    task = asyncio.create_task(sender(client).send(batches(2), Parked()))
    await wait_for(lambda: sim.stats.answers.get("dropped", 0) >= 3, 10, 0.01, "drops")
    sim.control(Control(outage=None))
    await asyncio.wait_for(task, 10)
    assert sim.stats.batches_stored == 2


async def test_auth_failure_pauses_until_credentials_work(
    sim: MParticleSim, client: MParticleClient
) -> None:
    """401/403: readiness false, metric 1, nothing parked; resumes once the key works."""
    health = Health()
    sim.set_credentials("rotated", API_SECRET)
    task = asyncio.create_task(sender(client, health).send(batches(3), Parked()))
    await wait_for(lambda: sim.stats.answers.get("403", 0) >= 2, 10, 0.01, "403s")
    assert not health.ready()
    assert health.report()[AUTH_COMPONENT]["ready"] is False
    assert sample("streamproc_deliver_auth_failed") == 1
    assert not task.done()
    sim.set_credentials(API_KEY, API_SECRET)
    await asyncio.wait_for(task, 10)
    assert health.ready()
    assert sample("streamproc_deliver_auth_failed") == 0
    assert sim.stats.batches_stored == 3


async def test_retry_limit_dead_letters_when_configured(
    sim: MParticleSim, client: MParticleClient
) -> None:
    """With max_retries set, a request failing past it is parked, never dropped."""
    sim.fail_next(503, count=10)
    parked = Parked()
    await sender(client, max_retries=2).send(batches(2), parked)
    assert [(o, c) for o, c, _ in parked.items] == [
        (0, "retries_exhausted"),
        (1, "retries_exhausted"),
    ]
    assert sim.stats.answers == {"503": 3}


async def test_other_4xx_is_retried_not_dead_lettered(
    sim: MParticleSim, client: MParticleClient
) -> None:
    """A 404 (say, a wrong base_url) is not about the batches: retried, nothing parked."""
    before = sample("streamproc_deliver_retries_total", reason="client_error")
    parked = Parked()
    sim.fail_next(404, count=2)
    await sender(client).send(batches(10), parked)
    assert parked.items == []
    assert sim.stats.batches_stored == 10
    assert sample("streamproc_deliver_retries_total", reason="client_error") == before + 2


async def test_a_huge_retry_after_is_cut_to_the_cap(
    sim: MParticleSim, client: MParticleClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Retry-After: 99999999 waits retry_after_max_s (logged as over it), then lands."""
    sim.fail_next(429, retry_after_s=99999999)
    s = sender(client, retry_after_max_s=0.3)
    with caplog.at_level(logging.WARNING, logger="streamproc.sinks.mparticle.sender"):
        await asyncio.wait_for(s.send(batches(3), Parked()), 10)
    refused, retried = sim.requests()
    assert (refused.status, retried.status) == ("429", "202")
    assert retried.ids == refused.ids == [request_id(i) for i in range(3)]
    assert 0.3 <= retried.arrived_at - refused.answered_at < 1.5
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("99999999 s" in m and "mparticle.retry_after_max_s" in m for m in warned), warned
    assert sim.stats.batches_stored == 3
