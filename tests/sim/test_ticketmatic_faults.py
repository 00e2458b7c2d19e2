"""The Ticketmatic simulator's fault modes and outages, through real HTTP: in-process, by
the control API and by the CLI options."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
import pytest_asyncio

from streamproc.formats.ticketmatic import position_key
from streamproc.sim.faults import RUNAWAY_NEXTID, misbehaviour
from streamproc.sim.ticketmatic import TicketmaticSim
from streamproc.sim.ticketmatic_command import add_arguments, schedule_faults
from tests.sim.test_ticketmatic_sim import ACME, BETA, Clock, signed

YEAR_MS = 365.25 * 86_400 * 1000
# A body shorter than announced fails the test at once instead of at its timeout.
READ_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_read=10)


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[TicketmaticSim]:
    async with TicketmaticSim([ACME, BETA], page_size=5) as running:
        running.generate("acme", 12)
        running.generate("beta", 12)
        yield running


async def fetch(
    sim: TicketmaticSim, account: str = "acme", **params: str
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one eventstream request with the account's own keys."""
    keys = ACME if account == "acme" else BETA
    async with (
        aiohttp.ClientSession(timeout=READ_TIMEOUT) as session,
        session.get(
            f"{sim.url}/api/1/{account}/eventstream", headers=signed(keys), params=params
        ) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def ids(sim: TicketmaticSim, account: str = "acme", **params: str) -> list[str]:
    status, _, body = await fetch(sim, account, **params)
    assert status == 200
    return [r["id"] for r in orjson.loads(body)["results"] or []]


def nesting(body: bytes) -> int:
    """How deep the JSON ``body`` nests (brackets outside strings); no recursion, so any
    depth can be measured."""
    deepest = level = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif byte in b"]}":
            level -= 1
    assert level == 0
    return deepest


# --- the page-shaped modes -------------------------------------------------------------------


async def test_descending_serves_the_same_items_newest_first(sim: TicketmaticSim) -> None:
    """The page's items, in descending id order; only the normal page counts as served."""
    sim.misbehave("descending")
    backwards = await ids(sim)
    normal = await ids(sim)
    assert len(normal) == 5
    assert backwards == normal[::-1]
    assert sorted(backwards, key=position_key, reverse=True) == backwards
    stats = sim.stats()["acme"]
    assert (stats["served"], stats["faults"]) == (5, {"descending": 1})


async def test_future_id_serves_the_last_item_100_years_ahead(sim: TicketmaticSim) -> None:
    """One item (the last) has an id and ts ~100 years ahead; the others and nextid as usual."""
    sim.misbehave("future_id")
    _, _, raw = await fetch(sim)
    shifted = orjson.loads(raw)
    _, _, raw = await fetch(sim)
    normal = orjson.loads(raw)
    assert shifted["results"][:4] == normal["results"][:4]
    assert shifted["nextid"] == normal["nextid"]
    future, original = shifted["results"][4], normal["results"][4]
    now_ms = time.time() * 1000
    assert now_ms + 99 * YEAR_MS < position_key(future["id"])[0] < now_ms + 101 * YEAR_MS
    assert int(future["ts"][:4]) >= datetime.now(UTC).year + 99
    assert (future["type"], future["data"]) == (original["type"], original["data"])


async def test_runaway_nextid_points_to_2286(sim: TicketmaticSim) -> None:
    """A normal page whose nextid is far beyond anything there is."""
    sim.misbehave("runaway_nextid")
    _, _, raw = await fetch(sim)
    page = orjson.loads(raw)
    assert page["nextid"] == RUNAWAY_NEXTID
    ms = position_key(page["nextid"])[0]
    assert datetime.fromtimestamp(ms / 1000, UTC).year == 2286
    assert [r["id"] for r in page["results"]] == await ids(sim)


async def test_creep_advances_nextid_by_one_and_serves_nothing(sim: TicketmaticSim) -> None:
    """Each creeping answer is empty, says there is more, and moves one sequence number."""
    sim.misbehave("creep", count=3)
    start = sim.items("acme")[2][0]
    nextid = start
    for _ in range(3):
        status, _, raw = await fetch(sim, id=nextid)
        page = orjson.loads(raw)
        assert (status, page["results"], page["moreresults"]) == (200, [], True)
        ms, seq = position_key(nextid)
        assert page["nextid"] == f"{ms}-{seq + 1}"
        nextid = page["nextid"]
    assert await ids(sim, id=nextid) == [i for i, _ in sim.items("acme")[5:10]]
    stats = sim.stats()["acme"]
    assert (stats["served"], stats["faults"]) == (5, {"creep": 3})


async def test_drip_sends_a_normal_page_slowly(sim: TicketmaticSim) -> None:
    """CHUNK bytes every INTERVAL: the whole page arrives, no sooner than the pauses add up."""
    sim.misbehave("drip", chunk=500, interval=0.05)
    began = time.monotonic()
    status, headers, raw = await fetch(sim)
    took = time.monotonic() - began
    assert status == 200
    assert int(headers["Content-Length"]) == len(raw)
    assert [r["id"] for r in orjson.loads(raw)["results"]] == await ids(sim)
    assert took >= (math.ceil(len(raw) / 500) - 1) * 0.05


async def test_stopping_ends_a_drip_in_flight() -> None:
    """stop() does not wait for a drip of hours: the client's read fails at once."""
    sim = TicketmaticSim([ACME])
    await sim.start()
    sim.generate("acme", 3)
    sim.misbehave("drip", chunk=1, interval=3600)
    reading = asyncio.create_task(fetch(sim))
    await asyncio.sleep(0.2)  # the headers and the first byte are out
    await asyncio.wait_for(sim.stop(), timeout=10)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(reading, timeout=10)


# --- the bodies too big to hold ----------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
async def test_oversized_body_has_its_size_and_is_streamed(content_length: bool) -> None:
    """16 MiB arrive, with or without Content-Length; the sim's memory stays under 2 MiB."""
    size = 16 * 1024 * 1024
    async with (
        TicketmaticSim([ACME]) as sim,
        aiohttp.ClientSession(timeout=READ_TIMEOUT) as session,
    ):
        sim.misbehave("oversized", size=size, content_length=content_length)
        received, head, tail = 0, b"", b""
        tracemalloc.start()
        try:
            async with session.get(f"{sim.url}/api/1/acme/eventstream", headers=signed(ACME)) as r:
                async for chunk in r.content.iter_chunked(64 * 1024):
                    head = head or chunk[:100]
                    tail = (tail + chunk)[-100:]
                    received += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status == 200
        if content_length:
            assert r.headers["Content-Length"] == str(size)
        else:
            assert "Content-Length" not in r.headers
            assert r.headers["Transfer-Encoding"] == "chunked"
        assert received == size
        assert head.startswith(b'{"results":[{"id":"')
        assert tail.endswith(b'"moreresults":true}')
        assert peak < size // 8
        assert sim.stats()["acme"]["faults"] == {"oversized": 1}


async def test_a_smaller_oversized_body_is_a_valid_page_of_ascending_items() -> None:
    """The body is a page as documented, its ids ascending, nextid just after the last."""
    async with TicketmaticSim([ACME]) as sim:
        sim.misbehave("oversized", size=100_000)
        status, _, raw = await fetch(sim)
    page = orjson.loads(raw)
    keys = [position_key(r["id"]) for r in page["results"]]
    assert (status, len(raw), page["moreresults"]) == (200, 100_000, True)
    assert len(keys) > 100
    assert keys == sorted(set(keys))
    assert position_key(page["nextid"]) == (keys[-1][0], keys[-1][1] + 1)


async def test_deep_body_is_nested_as_deep_as_asked(sim: TicketmaticSim) -> None:
    """100000 levels by default; a shallower one parses as a page whose item nests in data."""
    sim.misbehave("deep")
    sim.misbehave("deep", depth=300)
    status, headers, raw = await fetch(sim)
    assert (status, int(headers["Content-Length"])) == (200, len(raw))
    assert nesting(raw) == 100_000
    status, _, raw = await fetch(sim)
    assert nesting(raw) == 300
    [item] = orjson.loads(raw)["results"]
    assert item["type"] == "webshop:pageview"
    assert set(item["data"]) >= {"ref", "nested"}
    assert sim.stats()["acme"]["faults"] == {"deep": 2}


# --- status faults, resets and outages ---------------------------------------------------------


RETRY_AFTERS = ["99999999", "1e999", "inf", "-5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"]


@pytest.mark.parametrize("text", RETRY_AFTERS)
async def test_retry_after_sends_the_header_text_as_given(sim: TicketmaticSim, text: str) -> None:
    """A 429 in Ticketmatic's error JSON whose Retry-After is the raw text; fail_next too."""
    sim.misbehave("retry_after", value=text)
    sim.fail_next(1, 429, retry_after=text)
    for _ in range(2):
        status, headers, raw = await fetch(sim)
        assert (status, headers["Retry-After"], orjson.loads(raw)["code"]) == (429, text, 429)
    assert sim.stats()["acme"]["faults"] == {"retry_after": 1}


async def raw_get(sim: TicketmaticSim) -> bytes:
    """One request on a fresh connection of its own, read to the end (no client retries)."""
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    try:
        header = signed(ACME)["Authorization"]
        writer.write(
            b"GET /api/1/acme/eventstream HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
            b"Authorization: " + header.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def test_reset_drops_the_next_connection_without_an_answer(sim: TicketmaticSim) -> None:
    """The connection is reset before any byte of an answer; the next one is answered."""
    sim.misbehave("reset")
    with pytest.raises(ConnectionResetError):
        await raw_get(sim)
    assert (await raw_get(sim)).startswith(b"HTTP/1.1 200 ")
    assert sim.stats()["acme"]["faults"] == {"reset": 1}


async def test_outage_answers_every_request_its_status_until_it_ends() -> None:
    """For its duration: 500s for acme, even with wrong keys; beta unaffected; then pages."""
    clock = Clock()
    async with TicketmaticSim([ACME, BETA], clock=clock) as sim:
        now = datetime.fromtimestamp(clock.now, UTC)
        sim.generate("acme", 3)
        sim.outage(30, status=500, account="acme")
        async with aiohttp.ClientSession() as session:
            url = f"{sim.url}/api/1/acme/eventstream"
            async with session.get(url, headers=signed(ACME, when=now)) as r:
                assert (r.status, (await r.json())["code"]) == (500, 500)
            async with session.get(url) as r:  # no credentials at all
                assert r.status == 500
            async with session.get(
                f"{sim.url}/api/1/beta/eventstream", headers=signed(BETA, when=now)
            ) as r:
                assert r.status == 200
            clock.now += 30
            async with session.get(url, headers=signed(ACME, when=now)) as r:
                assert r.status == 200
                assert len((await r.json())["results"]) == 3
        assert sim.stats()["acme"]["faults"] == {"outage": 2}


async def test_outage_with_reset_is_a_transport_error_for_clients(sim: TicketmaticSim) -> None:
    """Every connection dropped, whatever the client retries; outage(0) ends it."""
    sim.outage(60, reset=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(sim)
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(sim, "beta")
    sim.outage(0)
    assert len(await ids(sim)) == 5


# --- scoping, order and counting ----------------------------------------------------------------


async def test_count_and_account_scope_a_fault(sim: TicketmaticSim) -> None:
    """count=2 for acme: its next two answers only; beta is served normally meanwhile."""
    normal = await ids(sim)
    sim.misbehave("descending", count=2, account="acme")
    assert await ids(sim, "beta") == [i for i, _ in sim.items("beta")[:5]]
    assert [await ids(sim) for _ in range(3)] == [normal[::-1], normal[::-1], normal]


async def test_without_account_each_account_gets_the_fault(sim: TicketmaticSim) -> None:
    """No account: the next answer of every account misbehaves, once each."""
    sim.misbehave("runaway_nextid")
    for account in ("acme", "beta"):
        ms, seq = position_key(sim.items(account)[4][0])
        for nextid in (RUNAWAY_NEXTID, f"{ms}-{seq + 1}"):
            _, _, raw = await fetch(sim, account)
            assert orjson.loads(raw)["nextid"] == nextid


async def test_queued_faults_answer_in_turn(sim: TicketmaticSim) -> None:
    """fail_next and misbehave queue in the order given, each for its count."""
    sim.fail_next(1, 502)
    sim.misbehave("creep", count=2)
    sim.fail_next(1, 429, retry_after="soon")
    statuses = [(await fetch(sim, id="0"))[:2] for _ in range(5)]
    assert [s for s, _ in statuses] == [502, 200, 200, 429, 200]
    assert sim.stats()["acme"]["faults"] == {"creep": 2}


async def test_a_bad_request_does_not_use_up_a_page_fault(sim: TicketmaticSim) -> None:
    """A 400 for unreadable parameters leaves the queued fault for the next request."""
    sim.misbehave("descending")
    status, _, _ = await fetch(sim, id="yesterday")
    assert status == 400
    backwards = await ids(sim)
    assert backwards == (await ids(sim))[::-1]


def test_faults_that_do_not_fit_are_refused() -> None:
    """Unknown modes, parameters another mode takes, bad values, counts below 1."""
    simulator = TicketmaticSim([ACME])
    cases: list[tuple[str, dict[str, object]]] = [
        ("sideways", {}),
        ("creep", {"size": 10}),
        ("deep", {"depth": 4}),
        ("oversized", {"size": 10}),
        ("drip", {"interval": -1}),
        ("retry_after", {}),
        ("retry_after", {"value": "1\r\nSet-Cookie: x"}),
    ]
    for mode, params in cases:
        with pytest.raises(ValueError, match=r"mode|takes no|depth|size|interval|value"):
            misbehaviour(mode, params)  # what misbehave() builds its answers with
    with pytest.raises(ValueError, match="count"):
        simulator.misbehave("creep", count=0)
    with pytest.raises(KeyError):
        simulator.misbehave("creep", account="nobody")
    assert misbehaviour("drip", {"chunk": "3", "interval": "0.5"}).interval == 0.5


# --- the control API and the CLI reach the same ---------------------------------------------------


async def test_control_api_queues_faults_and_outages(sim: TicketmaticSim) -> None:
    """POST /_sim/misbehave, /_sim/outage and /_sim/fail do what the methods do."""
    normal = await ids(sim)
    async with aiohttp.ClientSession() as session:

        async def post(path: str, **params: str) -> tuple[int, object]:
            async with session.post(f"{sim.url}/_sim/{path}", params=params) as r:
                return r.status, await r.json()

        assert (await post("misbehave", mode="descending", count="2", account="acme"))[0] == 200
        assert [await ids(sim) for _ in range(2)] == [normal[::-1]] * 2
        await post(
            "misbehave", mode="oversized", size="1000", content_length="false", account="beta"
        )
        status, headers, raw = await fetch(sim, "beta")
        assert (status, len(raw), headers["Transfer-Encoding"]) == (200, 1000, "chunked")
        await post("fail", status="429", retry_after="1e999", account="acme")
        assert (await fetch(sim))[1]["Retry-After"] == "1e999"
        await post("outage", seconds="60", status="502", account="beta")
        assert (await fetch(sim, "beta"))[0] == 502
        await post("outage", seconds="0", account="beta")
        assert (await fetch(sim, "beta"))[0] == 200
        for path, params, expected in [
            ("misbehave", {"mode": "sideways"}, 400),
            ("misbehave", {"mode": "deep", "depth": "deep"}, 400),
            ("misbehave", {"mode": "creep", "count": "many"}, 400),
            ("misbehave", {"mode": "creep", "account": "nobody"}, 404),
            ("outage", {}, 400),
            ("outage", {"seconds": "5", "reset": "maybe"}, 400),
        ]:
            status, body = await post(path, **params)
            assert (status, body["code"]) == (expected, expected)  # type: ignore[index]
        async with session.get(f"{sim.url}/_sim/stats") as r:
            faults = (await r.json())["accounts"]["beta"]["faults"]
    assert faults == {"oversized": 1, "outage": 1}


def cli_args(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--account", "acme:ak-acme:sk-acme", *options])


async def test_cli_options_queue_the_same_faults(sim: TicketmaticSim) -> None:
    """--misbehave MODE[:COUNT] with the mode options, --fault-account and --outage."""
    normal = await ids(sim)
    args = cli_args(
        "--misbehave",
        "descending:2",
        "--misbehave",
        "retry_after",
        "--retry-after-text",
        "soon",
        "--misbehave",
        "deep",
        "--deep-depth",
        "50",
        "--misbehave",
        "drip",
        "--drip-chunk",
        "4096",
        "--drip-interval",
        "0",
        "--fault-account",
        "acme",
    )
    schedule_faults(sim, args)
    assert [await ids(sim) for _ in range(2)] == [normal[::-1]] * 2
    status, headers, _ = await fetch(sim)
    assert (status, headers["Retry-After"]) == (429, "soon")
    assert nesting((await fetch(sim))[2]) == 50
    assert await ids(sim) == normal  # the drip, all at once
    assert await ids(sim) == normal
    assert await ids(sim, "beta") == [i for i, _ in sim.items("beta")[:5]]
    schedule_faults(sim, cli_args("--outage", "60", "--outage-status", "500"))
    assert [(await fetch(sim, a))[0] for a in ("acme", "beta")] == [500, 500]
    schedule_faults(sim, cli_args("--outage", "60", "--outage-reset", "--fault-account", "beta"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(sim, "beta")


@pytest.mark.parametrize(
    "options", [["--misbehave", "sideways"], ["--misbehave", "creep:0"], ["--outage", "soon"]]
)
def test_cli_refuses_fault_options_that_do_not_parse(options: list[str]) -> None:
    """An unknown mode, a count below 1 or an outage that is no number: a usage error."""
    with pytest.raises(SystemExit):
        cli_args(*options)
