"""One request against the simulator: pages, and every failure as its error class."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from streamproc.config import Secret, TicketmaticAccount
from streamproc.errors import (
    AuthError,
    BadRequest,
    DecodeError,
    RateLimited,
    ServerError,
    TransportError,
)
from streamproc.localkafka import free_port
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic.client import EventstreamClient
from streamproc.sources.ticketmatic.cursor import position_key

SIM_ACME = SimAccount("acme", "ak-acme", "sk-acme")


def account(auth: str = "hmac", sk: str = "sk-acme", name: str = "acme") -> TicketmaticAccount:
    return TicketmaticAccount(
        name=name,
        access_key="ak-acme",
        secret_key=Secret(sk),
        auth=auth,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("auth", ["hmac", "basic"])
async def test_fetch_decodes_a_page_with_either_auth(auth: str) -> None:
    """Both auth methods fetch the page; results stay raw JSON per item."""
    async with TicketmaticSim([SIM_ACME], page_size=3) as sim, EventstreamClient(sim.url) as client:
        ids = sim.generate("acme", 4)
        page = await client.fetch(account(auth), {})
        assert page.results is not None
        assert [bytes(r)[:30].decode().split('"')[3] for r in page.results] == ids[:3]
        assert page.moreresults is True
        ms, seq = position_key(ids[2])
        assert page.nextid == f"{ms}-{seq + 1}"  # where the next call starts, as documented


async def test_failures_map_to_error_classes(caplog: pytest.LogCaptureFixture) -> None:
    """429 (with Retry-After), 5xx, 401, 403, 400 and a bad 200 raise their classes."""
    caplog.set_level(logging.DEBUG)
    async with TicketmaticSim([SIM_ACME]) as sim, EventstreamClient(sim.url) as client:
        sim.fail_next(1, 429, retry_after=3)
        with pytest.raises(RateLimited) as limited:
            await client.fetch(account(), {})
        assert limited.value.retry_after == 3.0
        sim.fail_next(1, 503)
        with pytest.raises(ServerError):
            await client.fetch(account(), {})
        sim.fail_next(1, 200, body=b'{"results": []}')
        with pytest.raises(DecodeError):
            await client.fetch(account(), {})
        with pytest.raises(AuthError) as refused:
            await client.fetch(account(sk="wrong-secret"), {})
        assert refused.value.status == 401
        with pytest.raises(AuthError) as forbidden:
            await client.fetch(account(name="beta"), {})
        assert forbidden.value.status == 403
        with pytest.raises(BadRequest):
            await client.fetch(account(), {"id": "nonsense"})
    assert "wrong-secret" not in caplog.text
    assert "sk-acme" not in caplog.text


async def test_refused_connection_and_timeout_are_transport_errors() -> None:
    """Nobody listening, or an answer slower than the timeout: TransportError (retriable)."""
    async with EventstreamClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(TransportError):
            await client.fetch(account(), {})

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/api/1/acme/eventstream", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with EventstreamClient(f"http://127.0.0.1:{port}", timeout_s=0.2) as client:
            with pytest.raises(TransportError) as caught:
                await client.fetch(account(), {})
        assert caught.value.retriable
    finally:
        await runner.cleanup()
