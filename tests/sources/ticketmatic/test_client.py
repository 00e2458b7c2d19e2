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
from streamproc.formats.ticketmatic import position_key
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic.client import EventstreamClient
from tests.localkafka import free_port

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


class Peer:
    """A hostile eventstream on a free port: ``answer`` decides each response."""

    def __init__(self) -> None:
        self.answer: web.StreamResponse | None = None
        self.sent = 0
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        return await self.handler(request)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def __aenter__(self) -> Peer:
        app = web.Application()
        app.router.add_get("/api/1/acme/eventstream", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Huge(Peer):
    """Answers 200 with ``size`` bytes in 64 KiB chunks, counting what it managed to send."""

    def __init__(self, size: int, *, declare: bool) -> None:
        super().__init__()
        self.size = size
        self.declare = declare

    async def handler(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if self.declare:
            response.content_length = self.size
        await response.prepare(request)
        chunk = b'{"results":[' + b" " * (64 * 1024 - 12)
        try:
            while self.sent < self.size:
                await response.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: that is the point
        return response


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
async def test_an_oversized_answer_is_refused_without_reading_it_whole(declare: bool) -> None:
    """A 512 MiB answer against a 1 MiB limit: DecodeError too_large, little of it read."""
    size = 512 * 1024 * 1024
    peer = Huge(size, declare=declare)
    async with peer, EventstreamClient(peer.url, max_bytes=1024 * 1024) as client:
        with pytest.raises(DecodeError) as caught:
            await client.fetch(account(), {})
        assert caught.value.code == "too_large"
    await asyncio.sleep(0.2)
    # The client stopped reading at the limit: the peer could not push the rest.
    assert peer.sent < 64 * 1024 * 1024


class Fixed(Peer):
    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.response = (status, body, headers or {})

    async def handler(self, request: web.Request) -> web.StreamResponse:
        status, body, headers = self.response
        return web.Response(status=status, body=body, headers=headers)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"results":[{"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", "too_deep"),
        (b'{"results":[' + b"[" * 5_000, "too_deep"),
        (b'{"results":null,"nextid":"1-0","moreresults":"yes"}', "invalid"),
        (b'{"results":null,"nextid":"1-\xff","moreresults":false}', "not_json"),
    ],
    ids=["deep", "deep-truncated", "wrong-type", "bad-utf8"],
)
async def test_bad_pages_are_decode_errors_with_a_code(body: bytes, code: str) -> None:
    """Deep nesting, wrong types and invalid UTF-8 are DecodeErrors, never RecursionError."""
    async with Fixed(200, body) as peer, EventstreamClient(peer.url) as client:
        with pytest.raises(DecodeError) as caught:
            await client.fetch(account(), {})
    assert caught.value.code == code


async def test_an_error_body_is_cut_and_escaped() -> None:
    """A peer's error text cannot forge log lines: newlines and controls are escaped, cut."""
    forged = b"oops\n2026-12-02 INFO streamproc: all fine\x1b[2J" + b"x" * 100_000
    async with Fixed(503, forged) as peer, EventstreamClient(peer.url) as client:
        with pytest.raises(ServerError) as caught:
            await client.fetch(account(), {})
    text = str(caught.value)
    assert "\n" not in text
    assert "\x1b" not in text
    assert "oops\\n2026-12-02 INFO" in text
    assert len(text) < 400


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("99999999", 99999999.0), ("1e999", None), ("inf", None), ("-5", None)],
)
async def test_retry_after_is_parsed_strictly(header: str, expected: float | None) -> None:
    """Only delta-seconds or an HTTP date count; inf, exponents and negatives are ignored."""
    peer = Fixed(429, b"{}", {"Retry-After": header})
    async with peer, EventstreamClient(peer.url) as client:
        with pytest.raises(RateLimited) as caught:
            await client.fetch(account(), {})
    assert caught.value.retry_after == expected
