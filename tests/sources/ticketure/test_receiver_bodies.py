"""The receiver's answer to every kind of body: refusals dead-lettered, new attributes
accepted and counted, id-less events told apart where the request says how."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from streamproc import metrics
from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.formats.ticketure import RECORD_DECODER, TicketAudit
from streamproc.sources.ticketure.receiver import Receiver
from streamproc.sources.ticketure.writer import RecordTooLarge
from tests.metrics import sample
from tests.sources.ticketure.conftest import topic_names
from tests.sources.ticketure.test_receiver import BASIC, post, signed
from tests.sources.ticketure.test_shapes import mp_batch, mp_payment, mp_ticket, ticket
from tests.topics import read_topic

pytestmark = pytest.mark.kafka


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


MP_ONE = orjson.dumps(mp_batch(mp_ticket(custom_attributes={"seller": "@@"})))
OURS = orjson.dumps(ticket(email="@@"))
OURS_NEW = orjson.dumps(ticket(attributes={"new": "@@"}))


@pytest.mark.parametrize(
    ("route", "body", "field", "code"),
    [
        ("/v2/events", MP_ONE.replace(b'"@@"', b'"Jos\xe9"'), "body", "not_json"),
        ("/v2/events", MP_ONE.replace(b'"@@"', deep(1000)), "body", "too_deep"),
        (
            "/v2/bulkevents",
            b"[" + MP_ONE.replace(b'"@@"', deep(1000)) + b"]",
            "body",
            "too_deep",
        ),
        (
            "/v2/events",
            orjson.dumps(mp_batch(device_info="@@")).replace(b'"@@"', deep(1000)),
            "body",
            "too_deep",
        ),
        ("/ticketure/events", OURS.replace(b'"@@"', b'"Jos\xe9"'), "body", "not_json"),
        ("/ticketure/events", OURS.replace(b'"@@"', deep(1000)), "email", "invalid"),
        ("/ticketure/events", OURS_NEW.replace(b'"@@"', deep(1000)), "body", "too_deep"),
        (
            "/v2/events",
            MP_ONE.replace(b'"@@"', b'{"nested": 1}'),
            "events[0].data.custom_attributes.seller",
            "invalid",
        ),
    ],
    ids=[
        "mp-utf8",
        "mp-deep",
        "bulk-deep",
        "mp-deep-outside",
        "ours-utf8",
        "ours-deep-typed",
        "ours-deep-new",
        "nested",
    ],
)
async def test_bodies_that_were_500s_are_400s_and_dead_lettered(
    receiver: Receiver,
    rx_settings: Settings,
    http: aiohttp.ClientSession,
    route: str,
    body: bytes,
    field: str,
    code: str,
) -> None:
    """Invalid UTF-8 in an event's data and nesting 1,000 deep answer 400 naming the field,
    and the body is in the DLQ with the reason (they were 500s, nothing parked)."""
    dead_before = sample(
        "streamproc_dead_lettered_total", stage="receive", source="ticketure", reason=code
    )
    status, _, answer = await post(http, receiver, route, body, signed(body))
    assert status == 400, answer
    (error,) = orjson.loads(answer)["errors"]
    assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field)
    (letter,) = await read_topic(rx_settings, topic_names(rx_settings).dlq)
    assert letter.value == body
    reason = envelope.header(letter.headers, envelope.H_REASON) or ""
    assert reason.startswith(f"{code}: {field}: ")
    assert envelope.header(letter.headers, envelope.H_SENDER) == "signed"
    assert envelope.header(letter.headers, "route") == route
    assert sample(
        "streamproc_dead_lettered_total", stage="receive", source="ticketure", reason=code
    ) == (dead_before + 1)
    assert await read_topic(rx_settings, topic_names(rx_settings).ticketure) == []


async def test_an_event_kafka_cannot_take_is_a_400_naming_it_and_dead_lettered(
    receiver: Receiver,
    rx_settings: Settings,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record too large for Kafka (here the broker's refusal, simulated) is a 400 naming
    the event, with the body dead-lettered (it was a 413 that kept nothing)."""

    async def too_large(*_args: object) -> None:
        raise RecordTooLarge("Kafka refuses a record of this push as too large", 1)

    monkeypatch.setattr(receiver.writer, "write", too_large)
    body = orjson.dumps([ticket(), ticket(action="redeemed")])
    status, _, answer = await post(http, receiver, "/ticketure/events", body, BASIC)
    assert status == 400
    assert orjson.loads(answer)["errors"][0]["field"] == "[1]"
    (letter,) = await read_topic(rx_settings, topic_names(rx_settings).dlq)
    assert letter.value == body
    assert (envelope.header(letter.headers, envelope.H_REASON) or "").startswith("too_large: [1]: ")


async def test_unknown_attributes_are_accepted_on_both_routes_counted_and_kept(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """An attribute Ticketure might add tomorrow is a 202 on /ticketure/events (it was a
    400) and on /v2/events (it was dropped): kept on the record, counted by name."""
    names = ("seat_row", "loyalty_tier")
    before = {n: sample("streamproc_receiver_unknown_attributes_total", name=n) for n in names}
    ours = orjson.dumps(ticket(event_id="e-ours", attributes={"seat_row": "F", "price_paid": 2}))
    assert (await post(http, receiver, "/ticketure/events", ours, BASIC))[0] == 202
    custom = {"seat_row": "G", "loyalty_tier": True, "price_paid": "3.00"}
    batch = orjson.dumps(mp_batch(mp_ticket(source_message_id="e-mp", custom_attributes=custom)))
    assert (await post(http, receiver, "/v2/events", batch, BASIC))[0] == 202
    payment = orjson.dumps(mp_batch(mp_payment(source_message_id="e-pay")))
    assert (await post(http, receiver, "/v2/events", payment, BASIC))[0] == 202
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    by_id = {
        envelope.header(r.headers, envelope.H_ITEM_ID): RECORD_DECODER.decode(r.value)
        for r in records
    }
    ours_record, mp_record = by_id["e-ours"], by_id["e-mp"]
    assert isinstance(ours_record, TicketAudit)
    assert isinstance(mp_record, TicketAudit)
    assert ours_record.unknown_attributes == {"seat_row": "F"}
    assert ours_record.attributes.price_paid == 2
    assert mp_record.unknown_attributes == {"seat_row": "G", "loyalty_tier": True}
    assert mp_record.attributes.price_paid == "3.00"
    assert by_id["e-pay"].unknown_attributes is None
    payment_value = next(r.value for r in records if b"e-pay" in r.value)
    assert b"unknown_attributes" not in payment_value  # as records were before the field
    after = {n: sample("streamproc_receiver_unknown_attributes_total", name=n) for n in names}
    assert after == {"seat_row": before["seat_row"] + 2, "loyalty_tier": before["loyalty_tier"] + 1}


def test_unknown_attribute_names_are_a_bounded_label_set() -> None:
    """The first 50 distinct names are labels as they are (cut to 64 characters), later
    ones are "other", so a sender cannot grow the metric without end."""
    label = metrics.BoundedLabel(limit=50)
    assert [label(f"n{i}") for i in range(50)] == [f"n{i}" for i in range(50)]
    assert label("n50") == label("x" * 500) == "other"
    assert label("n7") == "n7"
    assert metrics.BoundedLabel()("y" * 500) == "y" * 64


async def test_id_less_twins_are_two_items_when_their_requests_carry_keys(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """Two redemptions alike to the second, without ids: two items when their pushes carry
    different Idempotency-Keys (or come in one push), one when nothing tells them apart."""
    twin = orjson.dumps(ticket(action="redeemed"))

    async def item_ids(body: bytes, key: str | None = None) -> list[str]:
        headers = BASIC if key is None else {**BASIC, "Idempotency-Key": key}
        status, _, answer = await post(http, receiver, "/ticketure/events", body, headers)
        assert status == 202, answer
        ids: list[str] = orjson.loads(answer)["item_ids"]
        return ids

    assert await item_ids(twin, "push-1") == ["push-1"]
    assert await item_ids(twin, "push-2") == ["push-2"]
    assert await item_ids(twin, "push-1") == ["push-1"]  # the sender's retry
    (hashed,) = await item_ids(twin)
    assert await item_ids(twin) == [hashed]  # nothing to tell a second event from a retry
    assert await item_ids(b"[" + twin + b"," + twin + b"]") == [hashed, f"{hashed}#2"]
    batch = orjson.dumps(mp_batch(mp_ticket(), source_request_id=None))
    headers = {**BASIC, "Idempotency-Key": "push-3"}
    assert (await post(http, receiver, "/v2/events", batch, headers))[0] == 202
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    ids = [envelope.header(r.headers, envelope.H_ITEM_ID) for r in records]
    assert sorted(ids, key=str) == sorted(
        ["push-1", "push-1", "push-2", hashed, hashed, hashed, f"{hashed}#2", "push-3"]
    )


@pytest.mark.parametrize("key", ["x" * 257, "caf\u00e9", "two words"])
async def test_an_unusable_idempotency_key_is_a_400_naming_the_header(
    receiver: Receiver, rx_settings: Settings, http: aiohttp.ClientSession, key: str
) -> None:
    """A key that cannot be an item id is refused naming the header, and dead-lettered."""
    body = orjson.dumps(ticket())
    headers = {**BASIC, "Idempotency-Key": key}
    status, _, answer = await post(http, receiver, "/ticketure/events", body, headers)
    assert status == 400
    assert orjson.loads(answer)["errors"][0]["field"] == "Idempotency-Key"
    (letter,) = await read_topic(rx_settings, topic_names(rx_settings).dlq)
    assert letter.value == body
