"""The Ticketure push simulator: realistic flows, both shapes, retries like a real sender."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from jsonschema import Draft7Validator, Draft202012Validator

from streamproc.config import PushSender, Secret
from streamproc.formats.ticketure import (
    GATEWAY_ACTIONS,
    TICKET_ACTIONS,
    GatewayAudit,
    TicketAudit,
)
from streamproc.schemas import load_schema
from streamproc.sim.ticketure import TicketureSim
from streamproc.sim.ticketure_flows import Flows, Step
from streamproc.sources.ticketure.auth import Authenticator, Verdict
from tests.procs import wait_for

CLOCK = 1_746_094_500.0


def steps(seed: int, n: int) -> list[Step]:
    return list(itertools.islice(Flows(seed, clock=lambda: CLOCK), n))


def test_same_seed_same_flows() -> None:
    """A seed fixes every id and value; another seed gives other flows."""
    assert steps(3, 300) == steps(3, 300)
    assert steps(3, 50) != steps(4, 50)


def test_flows_follow_ticketures_documented_shapes() -> None:
    """Purchase first, paired transfers, negative refunds, no $0 payments, every action."""
    actions: Counter[str] = Counter()
    orders: dict[str, list[TicketAudit | GatewayAudit]] = defaultdict(list)
    for step in steps(7, 4000):
        if any(r.action == "transfer_to" for r in step):
            assert [r.action for r in step] == ["transfer_from", "transfer_to"]
        else:
            assert len(step) == 1
        for record in step:
            kind = "ticket_audit" if isinstance(record, TicketAudit) else "gateway_audit"
            actions[f"{kind}:{record.action}"] += 1
            orders[record.order_key() or ""].append(record)
    assert set(actions) == {f"ticket_audit:{a}" for a in TICKET_ACTIONS} | {
        f"gateway_audit:{a}" for a in GATEWAY_ACTIONS
    }
    assert "" not in orders
    twice = 0
    for events in orders.values():
        assert events[0].action == "purchased"
        tickets_paid = Decimal(0)
        for record in events:
            if isinstance(record, TicketAudit) and record.action == "purchased":
                tickets_paid += Decimal(str(record.attributes.price_paid))
            if isinstance(record, GatewayAudit):
                total = Decimal(str(record.attributes.total_amount))
                assert total != 0
                if record.action == "purchase":
                    assert total == tickets_paid
                else:
                    assert total < 0
                    assert record.attributes.gateway_related_token
        # Tickets carry no id of their own: more redemptions than tickets means some
        # ticket was redeemed again.
        redeemed = sum(r.action in ("redeemed", "force_redeemed") for r in events)
        bought = sum(r.action == "purchased" for r in events)
        twice += redeemed > bought
    assert twice > 0


@pytest.fixture(scope="module")
def mparticle_validator(shared_reference: Path) -> Draft7Validator:
    schema = json.loads(
        (shared_reference / "mparticle/mparticle-eventsapi-schema.json").read_text()
    )
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def test_bodies_are_valid_in_both_shapes(mparticle_validator: Draft7Validator) -> None:
    """Record bodies pass our schema; mParticle bodies pass mParticle's batch schema."""
    ours = Draft202012Validator(
        load_schema("ticketure/events.schema.json"),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    records = TicketureSim("http://x", shape="records")
    batches = TicketureSim("http://x", shape="mparticle")
    for step in steps(11, 500):
        body = orjson.loads(records.body(step))
        ours.validate(body)
        assert isinstance(body, list) == (len(step) > 1)
        batch = orjson.loads(batches.body(step))
        mparticle_validator.validate(batch)
        assert len(batch["events"]) == len(step)
        assert batch["source_request_id"]


class Stub:
    """A push endpoint answering from a script, checking credentials like the receiver."""

    def __init__(self, answer: Callable[[int, bytes], int]) -> None:
        self.answer = answer
        self.bodies: list[bytes] = []
        self.auth = Authenticator(
            [
                PushSender(name="b", key="k", secret=Secret("s")),
                PushSender(name="h", auth="hmac", secret=Secret("hs")),
            ],
            "X-Signature-SHA256",
        )

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        method = self.auth.method(request.headers)
        sender: str | Verdict = method
        if method == "basic":
            sender = self.auth.basic(request.headers)
        elif method == "hmac":
            candidates = self.auth.hmac_candidates(request.headers, time.time())
            if isinstance(candidates, Verdict):
                sender = candidates
            else:
                sender = self.auth.signed(request.headers, body, candidates)
        if isinstance(sender, Verdict):
            return web.Response(status=401)
        self.bodies.append(body)
        status = self.answer(len(self.bodies), body)
        return web.Response(status=status, headers={"Retry-After": "0"})


@pytest_asyncio.fixture(loop_scope="function")
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    """A stub that answers 503 to every third request, 400 to bodies without ids, else 202."""

    def answer(n: int, body: bytes) -> int:
        if b"sim-bad" in body:
            return 400
        return 503 if n % 3 == 0 else 202

    server = Stub(answer)
    app = web.Application()
    app.router.add_post("/ticketure/events", server.handle)
    app.router.add_post("/v2/events", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(("shape", "auth"), [("records", "basic"), ("mparticle", "hmac")])
async def test_non_2xx_answers_are_retried_with_the_same_body(
    stub: tuple[Stub, str], shape: Any, auth: Any
) -> None:
    """503s are retried with the identical body until accepted; the counts say so."""
    server, url = stub
    sim = TicketureSim(
        url,
        shape=shape,
        auth=auth,
        key="k",
        secret="s" if auth == "basic" else "hs",
        rate=0,
        count=30,
        concurrency=1,
        backoff_base_s=0,
        seed=5,
    )
    stats = await sim.run()
    assert stats.pushes == 30
    assert stats.accepted == 30
    assert stats.retries == stats.statuses["503"] > 0
    assert stats.attempts == len(server.bodies) == 30 + stats.retries
    for n, body in enumerate(server.bodies, start=1):
        if n % 3 == 0:  # the retry of a 503 carries the same body
            assert server.bodies[n] == body
    assert "accepted 30" in stats.summary()


async def test_deliberate_duplicates_and_final_refusals_are_counted(
    stub: tuple[Stub, str],
) -> None:
    """duplicate_ratio re-sends accepted pushes; a 400 is not retried but counted."""
    server, url = stub
    sim = TicketureSim(
        url, key="k", secret="s", rate=0, count=20, backoff_base_s=0, duplicate_ratio=1.0
    )
    stats = await sim.run()
    assert stats.duplicates == 20
    assert len(set(server.bodies)) == 20
    sim = TicketureSim(url, key="k", secret="s", rate=0, count=3, backoff_base_s=0)
    sim.body = lambda step: b'{"sim-bad": 1}'  # type: ignore[method-assign]
    stats = await sim.run()
    assert (stats.rejected, stats.retries, stats.accepted) == (3, 0, 0)


async def test_stop_ends_an_unbounded_run(stub: tuple[Stub, str]) -> None:
    """run() without count or duration ends after stop(), in-flight pushes finished."""
    _server, url = stub
    sim = TicketureSim(url, key="k", secret="s", rate=200, backoff_base_s=0)
    task = asyncio.create_task(sim.run())
    await wait_for(lambda: sim.stats.accepted >= 5, what="5 accepted pushes")
    sim.stop()
    stats = await asyncio.wait_for(task, 30)
    assert stats.accepted + stats.failed + stats.rejected == stats.pushes


async def test_duration_bounds_a_run(stub: tuple[Stub, str]) -> None:
    """duration_s ends the run by itself."""
    _server, url = stub
    sim = TicketureSim(url, key="k", secret="s", rate=50, duration_s=0.3, backoff_base_s=0)
    stats = await asyncio.wait_for(sim.run(), 30)
    assert stats.pushes >= 1
    assert stats.pushes == stats.accepted
