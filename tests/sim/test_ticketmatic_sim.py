"""The Ticketmatic simulator: auth, paging, parameters, retention, faults, sessions."""

from __future__ import annotations

import base64
import collections
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
import pytest_asyncio

from streamproc.config import Settings
from streamproc.formats.ticketmatic import KNOWN_TYPES, decode_item, normalize_type, position_key
from streamproc.schemas import load_schema
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sim.webshop import WebshopSessions
from streamproc.sources.ticketmatic import auth
from tests.procs import Proc, settings_env, wait_for

ACME = SimAccount("acme", "ak-acme", "sk-acme")
BETA = SimAccount("beta", "ak-beta", "sk-beta")


class Clock:
    def __init__(self) -> None:
        self.now = 1_714_555_800.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[TicketmaticSim]:
    async with TicketmaticSim([ACME, BETA], page_size=5) as running:
        yield running


def signed(
    account: SimAccount, url_account: str | None = None, when: datetime | None = None
) -> dict[str, str]:
    now = when or datetime.now(UTC)
    header = auth.hmac_header(
        account.access_key, account.secret_key, url_account or account.name, now
    )
    return {"Authorization": header}


async def get(
    sim: TicketmaticSim, account: str, headers: dict[str, str], **params: str
) -> tuple[int, Any, Mapping[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sim.url}/api/1/{account}/eventstream", headers=headers, params=params) as r,
    ):
        return r.status, orjson.loads(await r.read()), dict(r.headers)


async def test_signed_header_and_basic_auth_are_accepted(sim: TicketmaticSim) -> None:
    """Both documented methods with the right keys get a page."""
    status, body, _ = await get(sim, "acme", signed(ACME))
    assert (status, body) == (200, {"results": None, "nextid": "0", "moreresults": False})
    basic = "Basic " + base64.b64encode(b"ak-acme:sk-acme").decode()
    status, _, _ = await get(sim, "acme", {"Authorization": basic})
    assert status == 200


def now_plus(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


BAD_CREDENTIALS: dict[str, Callable[[], dict[str, str]]] = {
    "missing": dict,
    "other-scheme": lambda: {"Authorization": "Bearer x"},
    "basic-wrong-secret": lambda: {
        "Authorization": "Basic " + base64.b64encode(b"ak-acme:wrong").decode()
    },
    "wrong-signature": lambda: {
        "Authorization": auth.hmac_header("ak-acme", "wrong", "acme", now_plus(0))
    },
    "unknown-key": lambda: {
        "Authorization": auth.hmac_header("nobody", "sk-acme", "acme", now_plus(0))
    },
    "ts-31-min-old": lambda: {
        "Authorization": auth.hmac_header("ak-acme", "sk-acme", "acme", now_plus(-31))
    },
    "ts-31-min-ahead": lambda: {
        "Authorization": auth.hmac_header("ak-acme", "sk-acme", "acme", now_plus(31))
    },
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
async def test_bad_credentials_get_401_in_ticketmatic_error_shape(
    sim: TicketmaticSim, case: str
) -> None:
    """Missing header, wrong secret or signature, unknown key, stale time: 401 with JSON error."""
    status, body, _ = await get(sim, "acme", BAD_CREDENTIALS[case]())
    assert status == 401
    assert set(body) == {"code", "message", "applicationcode", "applicationdata"}
    assert body["code"] == 401


async def test_signature_29_minutes_old_still_passes(sim: TicketmaticSim) -> None:
    """A signature time within 30 minutes is accepted."""
    status, _, _ = await get(
        sim, "acme", signed(ACME, when=datetime.now(UTC) - timedelta(minutes=29))
    )
    assert status == 200


async def test_another_accounts_key_gets_403(sim: TicketmaticSim) -> None:
    """Valid keys of beta reading acme's stream: no permission."""
    status, body, _ = await get(sim, "acme", signed(BETA, url_account="acme"))
    assert status == 403
    assert body["code"] == 403


async def drain(sim: TicketmaticSim, start: str | None = None) -> tuple[list[str], str | None]:
    """A client written from the documented protocol, not from streamproc's poller: no id
    at first (or ``start``), then ``id=nextid`` while ``moreresults``; stops when it is
    false. Returns the ids served, in order, and the last nextid."""
    ids: list[str] = []
    params = {} if start is None else {"id": start}
    for _ in range(100):
        status, body, _ = await get(sim, "acme", signed(ACME), **params)
        assert status == 200
        ids += [r["id"] for r in body["results"] or []]
        params = {"id": body["nextid"]}
        if not body["moreresults"]:
            return ids, body["nextid"]
    raise AssertionError("moreresults never became false")


async def test_a_documented_client_sees_each_item_exactly_once(sim: TicketmaticSim) -> None:
    """By default nextid is where the next call starts: across pages and polls, no repeats."""
    first = sim.generate("acme", 12)
    got, nextid = await drain(sim)
    assert got == first
    later = sim.generate("acme", 7)
    again, _ = await drain(sim, nextid)
    assert again == later


async def test_nextid_last_mode_serves_the_start_item_again() -> None:
    """With nextid="last", pages of at most N ascending items each start with the last one."""
    async with TicketmaticSim([ACME], page_size=5, nextid="last") as sim:
        ids = sim.generate("acme", 12)
        pages: list[list[str]] = []
        params: dict[str, str] = {}
        for _ in range(10):
            _, body, _ = await get(sim, "acme", signed(ACME), **params)
            pages.append([r["id"] for r in body["results"]])
            assert body["nextid"] == pages[-1][-1]
            params = {"id": body["nextid"]}
            if not body["moreresults"]:
                break
        assert all(len(p) <= 5 and p == sorted(p, key=position_key) for p in pages)
        assert all(p[0] == q[-1] for q, p in itertools.pairwise(pages))
        assert list(dict.fromkeys(i for p in pages for i in p)) == ids
        _, body, _ = await get(sim, "acme", signed(ACME), id=ids[-1])
        assert [r["id"] for r in body["results"]] == [ids[-1]]
        assert body["moreresults"] is False


def test_nextid_last_needs_pages_of_two() -> None:
    """A page of one that starts at its own nextid would never move on: refused."""
    with pytest.raises(ValueError, match="page_size"):
        TicketmaticSim([ACME], page_size=1, nextid="last")
    assert TicketmaticSim([ACME], page_size=1).page_size == 1


async def test_ts_eventtypes_and_bad_parameters() -> None:
    """`ts` starts at a time, `eventtypes` filters, and id with ts, or a bad id, is a 400."""
    clock = Clock()
    async with TicketmaticSim([ACME], page_size=100, clock=clock) as sim:
        sim.generate("acme", 50, span_s=100)
        now = datetime.fromtimestamp(clock.now, UTC)
        with_time = signed(ACME, when=now)
        _, body, _ = await get(
            sim,
            "acme",
            with_time,
            ts=(now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S+0000"),
        )
        assert body["results"]
        assert all(position_key(r["id"])[0] >= (clock.now - 30) * 1000 for r in body["results"])
        assert len(body["results"]) < 50
        _, body, _ = await get(
            sim, "acme", with_time, eventtypes="webshop:pageview,Webshop_Add_Tickets"
        )
        assert {r["type"] for r in body["results"]} <= {"webshop:pageview", "webshop:add_tickets"}
        status, body, _ = await get(sim, "acme", with_time, id="0", ts="2024-01-01T00:00:00")
        assert (status, body["code"]) == (400, 400)
        status, _, _ = await get(sim, "acme", with_time, id="yesterday")
        assert status == 400


async def test_items_past_the_retention_are_dropped() -> None:
    """With time_scale 3600, 4 hours pass in 4 seconds of the clock: older items are gone."""
    clock = Clock()
    async with TicketmaticSim([ACME], page_size=100, time_scale=3600, clock=clock) as sim:
        old = sim.generate("acme", 3)
        clock.now += 3
        new = sim.generate("acme", 2)
        clock.now += 2  # the first three are 5 s old now, the last two 2 s
        _, body, _ = await get(
            sim, "acme", signed(ACME, when=datetime.fromtimestamp(clock.now, UTC)), id=old[0]
        )
        assert [r["id"] for r in body["results"]] == new
        stats = sim.stats()["acme"]
        assert stats["dropped"] == 3
        assert stats["kept"] == 2
        assert stats["oldest_id"] == new[0]


async def test_injected_faults_and_stats_endpoint(sim: TicketmaticSim) -> None:
    """fail_next answers 429 with Retry-After, 5xx, or a raw body; /_sim/stats counts them."""
    sim.fail_next(1, 429, account="acme", retry_after=7)
    sim.fail_next(1, 502, account="acme")
    sim.fail_next(1, 200, account="acme", body=b"<html>oops</html>")
    status, body, headers = await get(sim, "acme", signed(ACME))
    assert (status, body["code"], headers["Retry-After"]) == (429, 429, "7")
    status, body, _ = await get(sim, "acme", signed(ACME))
    assert (status, body["code"]) == (502, 502)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.url}/api/1/acme/eventstream", headers=signed(ACME)) as r:
            assert (r.status, await r.read()) == (200, b"<html>oops</html>")
        async with session.post(
            f"{sim.url}/_sim/generate", params={"account": "beta", "n": "4"}
        ) as r:
            assert (await r.json())["generated"] == 4
        async with session.get(f"{sim.url}/_sim/stats") as r:
            stats = (await r.json())["accounts"]
    assert stats["acme"]["requests"] == 3
    assert stats["acme"]["status"] == {"429": 1, "502": 1, "200": 1}
    assert stats["beta"]["generated"] == 4


async def test_random_faults_are_seeded() -> None:
    """p429/p5xx fail about that share of requests, the same way for the same seed."""

    async def statuses(seed: int) -> list[int]:
        async with TicketmaticSim([ACME], p429=0.3, p5xx=0.3, seed=seed) as sim:
            return [(await get(sim, "acme", signed(ACME)))[0] for _ in range(40)]

    first = await statuses(1)
    assert first == await statuses(1)
    assert 5 < first.count(200) < 35
    assert 429 in first
    assert {s for s in first if s >= 500}


def test_sessions_are_realistic_and_reproducible() -> None:
    """Generated items decode, fit the schema, carry a ref, and follow a session's order."""
    validator = jsonschema.Draft7Validator(load_schema("ticketmatic/eventstream-item.schema.json"))
    sessions = WebshopSessions(seed=3)
    generated = sessions.take(2000)
    assert generated[:50] == WebshopSessions(seed=3).take(50)
    by_ref: dict[str, list[str]] = collections.defaultdict(list)
    types: collections.Counter[str] = collections.Counter()
    for n, (item_type, data) in enumerate(generated):
        raw = {
            "id": f"1714555800000-{n}",
            "ts": "2024-05-01T09:30:00",
            "type": item_type,
            "data": data,
        }
        validator.validate(raw)
        item = decode_item(orjson.dumps(raw))
        assert item.data.ref
        by_ref[item.data.ref].append(normalize_type(item_type))
        types[normalize_type(item_type).split(":")[1]] += 1
    assert set(types) == set(KNOWN_TYPES)
    steps = [
        "checkout_start",
        "checkout_addcustomerinfo",
        "checkout_adddeliveryinfo",
        "checkout_addpaymentinfo",
        "checkout_initiatepayment",
        "checkout_confirm",
    ]
    for journey in by_ref.values():
        checkout = [t.split(":")[1] for t in journey if "checkout" in t]
        assert checkout == steps[: len(checkout)]
        if "webshop:checkout_start" in journey:
            assert journey.index("webshop:add_tickets") < journey.index("webshop:checkout_start")


def test_confirmed_orders_add_up(shared_reference: Path) -> None:
    """A confirmation's total is the sum of its ticket prices, service charges and products."""
    from decimal import Decimal

    for item_type, data in WebshopSessions(seed=5).take(500):
        if item_type != "webshop:checkout_confirm":
            continue
        order = data["order"]
        total = sum(
            (Decimal(t["price"]) + Decimal(t["servicecharge"]) for t in order["tickets"]),
            Decimal(0),
        ) + sum((Decimal(p["price"]) for p in order["products"]), Decimal(0))
        assert Decimal(order["totalamount"]) == total
        assert order["customerid"]
        assert order["deliveryscenarioid"]
        assert order["paymentscenarioid"]
    reference = orjson.loads(
        (shared_reference / "ticketmatic" / "eventstream-items.json").read_bytes()
    )
    documented = {k for e in reference if e["data"].get("order") for k in e["data"]["order"]}
    _, data = next(i for i in WebshopSessions(seed=5).take(20) if i[0] == "webshop:add_tickets")
    assert set(data["order"]) == documented


async def test_cli_command_serves_until_sigterm(tmp_path: Path) -> None:
    """`streamproc sim ticketmatic` serves a backlog, misbehaves as told, exits 0 on SIGTERM."""
    from tests.localkafka import free_port

    port = free_port()
    proc = Proc(
        [
            "sim",
            "ticketmatic",
            "--account",
            "acme:ak-acme:sk-acme",
            "--port",
            str(port),
            "--backlog",
            "30",
            "--page-size",
            "10",
            "--misbehave",
            "descending",
        ],
        settings_env(Settings()),
        tmp_path / "sim.log",
    )
    try:
        sim_url = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{sim_url}/_sim/stats") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(up, timeout_s=20, what="the simulator to listen")
        async with aiohttp.ClientSession() as s:
            pages = []
            for _ in range(2):
                async with s.get(f"{sim_url}/api/1/acme/eventstream", headers=signed(ACME)) as r:
                    pages.append(await r.json())
            assert [len(p["results"]) for p in pages] == [10, 10]
            assert pages[1]["moreresults"] is True
            assert pages[0]["results"] == pages[1]["results"][::-1]
    finally:
        code = proc.terminate()
    assert code == 0, proc.log_path.read_text()


async def test_live_generation_and_http_fault_endpoint() -> None:
    """`rate` adds items while running; POST /_sim/fail queues failures from outside."""
    async with TicketmaticSim([ACME], rate=200, unknown_fraction=0.5) as sim:
        await wait_for(lambda: sim.stats()["acme"]["generated"] >= 20, timeout_s=10, what="items")
        types = {orjson.loads(raw)["type"] for _, raw in sim.items("acme")}
        assert types - {f"webshop:{t}" for t in KNOWN_TYPES}  # some undocumented types
        async with aiohttp.ClientSession() as session:
            params = {"status": "500", "count": "2", "account": "acme"}
            async with session.post(f"{sim.url}/_sim/fail", params=params) as r:
                assert (await r.json())["queued"] == 2
        assert [(await get(sim, "acme", signed(ACME)))[0] for _ in range(3)] == [500, 500, 200]
