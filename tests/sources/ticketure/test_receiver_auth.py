"""Credentials before the body, a cap on bodies read unauthenticated, and HMAC replay
protection, against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import orjson
import pytest
import pytest_asyncio

from streamproc.config import PushSender, Secret, Settings
from streamproc.formats import envelope
from streamproc.sim.credentials import basic, push_signature
from streamproc.sim.ticketure import TicketureSim
from streamproc.sources.ticketure.receiver import Receiver
from tests.metrics import sample
from tests.sources.ticketure.conftest import (
    HMAC_SECRET,
    KEY,
    SENDERS,
    receiver_settings,
    topic_names,
)
from tests.sources.ticketure.rawhttp import Conn, head
from tests.sources.ticketure.test_receiver import post
from tests.sources.ticketure.test_shapes import ticket
from tests.topics import read_topic

pytestmark = pytest.mark.kafka

JSON = {"Content-Type": "application/json"}
WINDOW_SECRET = "windowed-secret"
WINDOWED = PushSender(
    name="windowed", auth="hmac", secret=Secret(WINDOW_SECRET), replay_window_s=60
)


@pytest_asyncio.fixture(loop_scope="function")
async def guarded(kafka_settings: Settings) -> AsyncIterator[Receiver]:
    """A receiver with a windowed hmac sender too, and at most 2 unauthenticated reads."""
    settings = receiver_settings(kafka_settings, max_unauthenticated_reads=2)
    with_window = msgspec.structs.replace(settings.receiver, senders=[*SENDERS, WINDOWED])
    settings = msgspec.structs.replace(settings, receiver=with_window)
    async with Receiver(settings, host="127.0.0.1", port=0, probe_interval_s=0.2) as rx:
        yield rx


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": basic(KEY, "wrong"), **JSON}, 403),
        ({"Authorization": "Basic !!!", **JSON}, 401),
        ({"X-Signature-SHA256": "sha256=not-hex", **JSON}, 403),
        ({"X-Signature-SHA256": "a" * 63, **JSON}, 403),
        ({"X-Other": "x", **JSON}, 401),
    ],
    ids=["basic-wrong", "basic-junk", "hmac-not-hex", "hmac-short", "none"],
)
async def test_credentials_are_refused_before_the_body_is_read(
    guarded: Receiver, headers: dict[str, str], status: int
) -> None:
    """A head announcing 1 MB with bad credentials is answered at once: no body is waited
    for or read (it was read whole before an hmac signature was looked at)."""
    conn = await Conn.open(guarded.port)
    try:
        await conn.send(head("/ticketure/events", headers, content_length=1_000_000))
        got, _, answer = await conn.answer(timeout_s=2.0)
    finally:
        conn.close()
    assert got == status
    assert orjson.loads(answer)["errors"][0]["code"] in ("UNAUTHORIZED", "FORBIDDEN")


async def test_unauthenticated_body_reads_are_capped(guarded: Receiver) -> None:
    """With 2 signed bodies being read, a third is answered 429 with Retry-After at once;
    once they are gone, a signed push is taken."""
    body = orjson.dumps(ticket(event_id="after-the-cap"))
    signature = {"X-Signature-SHA256": push_signature(HMAC_SECRET, body), **JSON}
    before = sample("streamproc_items_rejected_total", source="ticketure", reason="busy")
    holders = [await Conn.open(guarded.port) for _ in range(2)]
    try:
        for conn in holders:  # a well-formed signature, then the body never comes
            await conn.send(head("/ticketure/events", signature, len(body)) + body[:10])
        await asyncio.sleep(0.2)
        third = await Conn.open(guarded.port)
        await third.send(head("/ticketure/events", signature, len(body)) + body)
        status, headers, _ = await third.answer(timeout_s=2.0)
        third.close()
        assert (status, headers["retry-after"]) == (429, "1")
        assert sample("streamproc_items_rejected_total", source="ticketure", reason="busy") == (
            before + 1
        )
    finally:
        for conn in holders:
            conn.close()
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as http:
        assert (await post(http, guarded, "/ticketure/events", body, signature))[0] == 202


def timestamped(body: bytes, secret: str, at: float) -> dict[str, str]:
    stamp = int(at)
    return {
        "X-Signature-SHA256": push_signature(secret, body, stamp),
        "X-Signature-Timestamp": str(stamp),
        **JSON,
    }


async def test_replay_protection_on_refuses_stale_or_unstamped_pushes(
    guarded: Receiver, kafka_settings: Settings
) -> None:
    """A sender with replay_window_s: a fresh signed time is taken (a replay within the
    window too, under the same item id); an old time, no time or an unsigned one is not."""
    body = orjson.dumps(ticket(event_id="stamped"))
    now = time.time()
    cases = [
        (timestamped(body, WINDOW_SECRET, now), 202),
        (timestamped(body, WINDOW_SECRET, now), 202),  # replayed within the window
        (timestamped(body, WINDOW_SECRET, now - 120), 403),  # replayed after it
        (timestamped(body, WINDOW_SECRET, now + 120), 403),  # well past it, load or not
        ({"X-Signature-SHA256": push_signature(WINDOW_SECRET, body), **JSON}, 403),  # no time
        (
            {
                "X-Signature-SHA256": push_signature(WINDOW_SECRET, body),
                "X-Signature-Timestamp": str(int(now)),
                **JSON,
            },
            403,  # a time, but the signature is of the body alone
        ),
    ]
    async with aiohttp.ClientSession() as http:
        got = [(await post(http, guarded, "/ticketure/events", body, h))[0] for h, _ in cases]
    assert got == [status for _, status in cases]
    records = await read_topic(kafka_settings, topic_names(kafka_settings).ticketure)
    assert [envelope.header(r.headers, envelope.H_ITEM_ID) for r in records] == ["stamped"] * 2
    assert {envelope.header(r.headers, envelope.H_SENDER) for r in records} == {"windowed"}


async def test_replay_protection_off_takes_the_body_signature_alone(guarded: Receiver) -> None:
    """A sender without replay_window_s (the default) signs the body alone, with or without
    a timestamp header, and may be replayed at any time."""
    body = orjson.dumps(ticket())
    plain = {"X-Signature-SHA256": push_signature(HMAC_SECRET, body), **JSON}
    with_stamp = {**plain, "X-Signature-Timestamp": "12"}
    async with aiohttp.ClientSession() as http:
        for headers in (plain, with_stamp, plain):
            assert (await post(http, guarded, "/ticketure/events", body, headers))[0] == 202


async def test_the_simulator_signs_a_timestamp_for_a_windowed_sender(guarded: Receiver) -> None:
    """TicketureSim with timestamp_header: every push of a windowed sender is taken."""
    sim = TicketureSim(
        f"http://127.0.0.1:{guarded.port}",
        shape="mparticle",
        auth="hmac",
        secret=WINDOW_SECRET,
        timestamp_header="X-Signature-Timestamp",
        rate=0,
        count=20,
    )
    stats = await sim.run()
    assert (stats.accepted, stats.rejected, stats.failed) == (20, 0, 0)
