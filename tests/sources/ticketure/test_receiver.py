"""The receiver against the real broker: every answer, what reaches Kafka, and what does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from streamproc.config import KafkaSettings, Settings
from streamproc.formats import envelope
from streamproc.formats.ticketure import RECORD_DECODER, TicketAudit
from streamproc.sim.credentials import basic, push_signature
from streamproc.sources.ticketure.audit_shape import Accepted
from streamproc.sources.ticketure.receiver import Receiver
from streamproc.sources.ticketure.writer import RecordTooLarge
from tests import localkafka
from tests.metrics import sample
from tests.sources.ticketure.conftest import (
    HMAC_SECRET,
    KEY,
    SECRET,
    receiver_settings,
    topic_names,
)
from tests.sources.ticketure.test_shapes import mp_batch, mp_payment, mp_ticket, ticket
from tests.topics import read_topic

pytestmark = pytest.mark.kafka

BASIC = {"Authorization": basic(KEY, SECRET), "Content-Type": "application/json"}
REQUESTS = "streamproc_receiver_requests_total"


def signed(body: bytes) -> dict[str, str]:
    return {
        "X-Signature-SHA256": push_signature(HMAC_SECRET, body),
        "Content-Type": "application/json",
    }


async def post(
    http: aiohttp.ClientSession, rx: Receiver, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(f"http://127.0.0.1:{rx.port}{path}", data=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def test_records_are_acknowledged_once_in_kafka_with_key_and_headers(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """A 202 lists item ids; Kafka holds each record keyed by order, with every header."""
    before = sample("streamproc_items_in_total", source="ticketure")
    gateway = {
        "type": "gateway_audit",
        "action": "refund",
        "occurred_at": "2025-05-01T10:16:00+02:00",
        "attributes": {"cart_id": "cart-9", "total_amount": "-12.50"},
    }
    body = orjson.dumps([ticket(event_id="evt-1"), gateway])
    status, _, answer = await post(http, receiver, "/ticketure/events", body, BASIC)
    assert status == 202
    item_ids = orjson.loads(answer)["item_ids"]
    assert item_ids[0] == "evt-1"
    assert item_ids[1].startswith("sha256:")
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    assert len(records) == 2
    by_id = {envelope.header(r.headers, envelope.H_ITEM_ID): r for r in records}
    assert set(by_id) == set(item_ids)
    first = by_id["evt-1"]
    assert first.key == b"ord-1"
    assert envelope.header(first.headers, envelope.H_SOURCE) == "ticketure"
    assert envelope.header(first.headers, envelope.H_SENDER) == "ticketure"
    assert envelope.header(first.headers, envelope.H_ITEM_TIME) == "1746094500000"
    assert int(envelope.header(first.headers, envelope.H_RECEIVED) or 0) > 1746094500000
    decoded = RECORD_DECODER.decode(first.value)
    assert isinstance(decoded, TicketAudit)
    assert decoded.event_id == "evt-1"
    second = by_id[item_ids[1]]
    assert second.key == b"cart-9"
    assert envelope.header(second.headers, envelope.H_ITEM_TIME) == "1746087360000"
    assert RECORD_DECODER.decode(second.value).event_id == item_ids[1]
    assert sample("streamproc_items_in_total", source="ticketure") == before + 2


async def test_mparticle_routes_take_batches_signed_or_basic(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """/v2/events and /v2/bulkevents answer 202 and write the Ticketure events they hold."""
    skipped_before = sample(
        "streamproc_items_rejected_total", source="ticketure", reason="unsupported_event"
    )
    one = orjson.dumps(mp_batch(mp_ticket(source_message_id="m-1")))
    status, _, answer = await post(http, receiver, "/v2/events", one, signed(one))
    assert (status, answer) == (202, b"")
    bulk = orjson.dumps(
        [
            mp_batch(mp_payment(source_message_id="m-2")),
            mp_batch({"event_type": "screen_view", "data": {"screen_name": "home"}}),
        ]
    )
    status, _, _ = await post(http, receiver, "/v2/bulkevents", bulk, BASIC)
    assert status == 202
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    senders = {
        envelope.header(r.headers, envelope.H_ITEM_ID): envelope.header(
            r.headers, envelope.H_SENDER
        )
        for r in records
    }
    assert senders == {"m-1": "signed", "m-2": "ticketure"}
    assert (
        sample("streamproc_items_rejected_total", source="ticketure", reason="unsupported_event")
        == skipped_before + 1
    )


async def chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 8192):
        yield b" " * 8192


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "field"),
    [
        ("/ticketure/events", b"{", BASIC, 400, "body"),
        ("/ticketure/events", orjson.dumps(ticket(action="sold")), BASIC, 400, "action"),
        ("/v2/events", orjson.dumps(mp_batch(environment="qa")), BASIC, 400, "environment"),
        ("/v2/bulkevents", orjson.dumps(mp_batch()), BASIC, 400, "body"),
        ("/ticketure/events", orjson.dumps(ticket()), {}, 401, None),
        ("/v2/events", orjson.dumps(mp_batch()), {"Authorization": "Bearer x"}, 401, None),
        (
            "/v2/events",
            orjson.dumps(mp_batch()),
            {"Authorization": basic(KEY, "wrong")},
            403,
            None,
        ),
        (
            "/ticketure/events",
            b"{}",
            {"X-Signature-SHA256": push_signature("wrong", b"{}")},
            403,
            None,
        ),
        ("/ticketure/events", b" " * (64 * 1024), BASIC, 400, "body"),  # at the limit
        ("/ticketure/events", b" " * (64 * 1024 + 1), BASIC, 413, "body"),
        ("/ticketure/events", "chunked", BASIC, 413, "body"),
        (
            "/ticketure/events",
            orjson.dumps(ticket()),
            {**BASIC, "Content-Type": "text/plain"},
            415,
            "Content-Type",
        ),
    ],
)
async def test_every_refusal_answers_its_status_and_writes_no_record(
    receiver: Receiver,
    rx_settings: Settings,
    http: aiohttp.ClientSession,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    """400/401/403/413/415 carry mParticle's error body; no record reaches the topic."""
    before = sample("streamproc_receiver_requests_total", route=path, status=str(status))
    data = chunks(128 * 1024) if body == "chunked" else body
    got, answer_headers, answer = await post(http, receiver, path, data, headers)
    assert got == status
    (error,) = orjson.loads(answer)["errors"]
    assert error["code"]
    assert error["message"]
    assert error.get("field") == field
    if status == 401:
        assert error["message"] == "authentication required"
        assert answer_headers["WWW-Authenticate"].startswith("Basic")
    if status == 403:
        assert error["message"] == "credentials not accepted"
    assert sample("streamproc_receiver_requests_total", route=path, status=str(status)) == (
        before + 1
    )
    assert await read_topic(rx_settings, topic_names(rx_settings).ticketure) == []


async def test_other_paths_and_methods_are_404_and_405_in_mparticles_shape(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """No route: 404; a route with another method: 405 with Allow: POST; both counted
    under route "other", with an error body like the other refusals."""
    before = {s: sample(REQUESTS, route="other", status=s) for s in ("404", "405")}
    base = f"http://127.0.0.1:{receiver.port}"
    async with http.post(f"{base}/v2/nowhere", data=b"{}", headers=BASIC) as response:
        assert response.status == 404
        (error,) = orjson.loads(await response.read())["errors"]
        assert error["code"] == "NOT_FOUND"
    for method in ("GET", "PUT"):
        async with http.request(method, f"{base}/ticketure/events", headers=BASIC) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "POST"
            (error,) = orjson.loads(await response.read())["errors"]
            assert error["code"] == "METHOD_NOT_ALLOWED"
    assert sample(REQUESTS, route="other", status="404") == before["404"] + 1
    assert sample(REQUESTS, route="other", status="405") == before["405"] + 2


async def test_undecodable_authenticated_bodies_are_dead_lettered(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """A 400 for an authenticated sender leaves the body and the reason in the DLQ."""
    bad = orjson.dumps(ticket(occurred_at="yesterday"))
    assert (await post(http, receiver, "/ticketure/events", bad, BASIC))[0] == 400
    unauthenticated = orjson.dumps(ticket(occurred_at="never"))
    assert (await post(http, receiver, "/ticketure/events", unauthenticated, {}))[0] == 401
    (letter,) = await read_topic(rx_settings, topic_names(rx_settings).dlq)
    assert letter.value == bad
    reason = envelope.header(letter.headers, envelope.H_REASON) or ""
    assert "occurred_at" in reason
    assert "RFC 3339" in reason
    assert envelope.header(letter.headers, envelope.H_SENDER) == "ticketure"
    assert envelope.header(letter.headers, "dlq_stage") == "receive"
    assert (
        envelope.header(letter.headers, envelope.H_ORIGIN_TOPIC)
        == topic_names(rx_settings).ticketure
    )


async def test_a_refused_body_at_the_size_limit_is_dead_lettered_whole(
    kafka_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """A 1 MiB body is dead-lettered (400), though its letter is larger than a record."""
    settings = receiver_settings(kafka_settings)  # max_body_bytes: 1 MiB
    bad = ticket(occurred_at="yesterday", email="x" * 1024)
    padding = settings.receiver.max_body_bytes - len(orjson.dumps(bad))
    bad["email"] += "x" * padding
    body = orjson.dumps(bad)
    assert len(body) == settings.receiver.max_body_bytes
    async with Receiver(settings, host="127.0.0.1", port=0) as rx:
        assert (await post(http, rx, "/ticketure/events", body, BASIC))[0] == 400
    (letter,) = await read_topic(settings, topic_names(settings).dlq)
    assert letter.value == body


async def test_a_push_with_an_event_too_large_for_a_record_writes_nothing(
    kafka_settings: Settings,
) -> None:
    """413 for the whole push, and none of its events in Kafka: not even the small one."""
    settings = receiver_settings(kafka_settings)
    small = TicketAudit(action="purchased", occurred_at="2025-05-01T10:15:00Z", event_id="e1")
    large = TicketAudit(
        action="purchased", occurred_at="2025-05-01T10:15:00Z", email="x" * (1024 * 1024)
    )
    async with Receiver(settings, host="127.0.0.1", port=0) as rx:
        with pytest.raises(RecordTooLarge):
            await rx.writer.write(b"ticketure", [Accepted(small, 1), Accepted(large, 2)], 3)
    assert await read_topic(settings, topic_names(settings).ticketure) == []


async def test_a_refused_push_kafka_cannot_keep_is_answered_503(
    receiver: Receiver,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No 400 until the refused body is in the DLQ: the sender gets 503 and retries."""

    async def refused(_letter: object) -> bool:
        return False

    monkeypatch.setattr(receiver.writer, "dead_letter", refused)
    before = sample(
        "streamproc_dead_lettered_total", stage="receive", source="ticketure", reason="invalid"
    )
    bad = orjson.dumps(ticket(occurred_at="yesterday"))
    got, answer_headers, _ = await post(http, receiver, "/ticketure/events", bad, BASIC)
    assert got == 503
    assert "Retry-After" in answer_headers
    assert (
        sample(
            "streamproc_dead_lettered_total", stage="receive", source="ticketure", reason="invalid"
        )
        == before
    )


async def test_replayed_pushes_carry_the_same_item_ids(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """The same push sent three times lands three times under one item id per event."""
    body = orjson.dumps([ticket(), ticket(action="redeemed")])
    answers = [await post(http, receiver, "/ticketure/events", body, BASIC) for _ in range(3)]
    assert {a[0] for a in answers} == {202}
    assert len({a[2] for a in answers}) == 1
    batch = orjson.dumps(mp_batch(mp_ticket(), mp_ticket("Redeemed")))
    for _ in range(2):
        assert (await post(http, receiver, "/v2/events", batch, BASIC))[0] == 202
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    ids = [envelope.header(r.headers, envelope.H_ITEM_ID) or "" for r in records]
    assert len(ids) == 10
    assert sorted(set(ids)) == sorted(
        [*orjson.loads(answers[0][2])["item_ids"], "req-1#0", "req-1#1"]
    )
    assert all(ids.count(i) in (2, 3) for i in ids)


async def test_kafka_unreachable_answers_503_and_is_not_ready(
    rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """Without a broker: 503 with Retry-After, readiness false; a bad body too, since its
    dead-letter copy cannot be kept (a 400 would end the sender's retries)."""
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{localkafka.free_port()}")
    settings = receiver_settings(Settings(topic_prefix=rx_settings.topic_prefix, kafka=nowhere))
    async with Receiver(
        settings, host="127.0.0.1", port=0, produce_timeout_s=1.0, probe_interval_s=0.1
    ) as rx:
        assert not rx.health.ready()
        assert rx.health.report()["receiver.kafka"]["ready"] is False
        before = sample("streamproc_items_rejected_total", source="ticketure", reason="unavailable")
        status, headers, answer = await post(
            http, rx, "/ticketure/events", orjson.dumps(ticket()), BASIC
        )
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert orjson.loads(answer)["errors"][0]["code"] == "SERVICE_UNAVAILABLE"
        assert (
            sample("streamproc_items_rejected_total", source="ticketure", reason="unavailable")
            == before + 1
        )
        assert (await post(http, rx, "/ticketure/events", b"[]", BASIC))[0] == 503


async def test_start_and_stop_are_idempotent(rx_settings: Settings) -> None:
    """start() and stop() twice are fine; a stopped receiver is not ready."""
    rx = Receiver(rx_settings, host="127.0.0.1", port=0)
    await rx.start()
    await rx.start()
    assert rx.health.ready()
    await rx.stop()
    await rx.stop()
    assert not rx.health.ready()
