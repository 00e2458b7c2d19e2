"""Decoding both push shapes into canonical records, item ids, and the mParticle encoder."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import DecodeError
from streamproc.sources.ticketure import audit_shape, ids, mparticle_shape
from streamproc.sources.ticketure.records import (
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)


def ticket(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "ticket_audit",
        "action": "purchased",
        "occurred_at": "2025-05-01T10:15:00Z",
        "email": "a@example.com",
        "attributes": {"ticket_order_id": "ord-1", "price_paid": "25.00"},
    }
    return base | fields


def error_of(body: bytes, *, shape: str = "ours") -> DecodeError:
    def decode() -> object:
        if shape == "ours":
            return audit_shape.decode(body)
        return mparticle_shape.decode(body, bulk=shape == "bulk")

    with pytest.raises(DecodeError) as info:
        decode()
    return info.value


# --- our shape --------------------------------------------------------------------------


def test_one_record_or_an_array() -> None:
    """A single record and an array of records both decode, keeping their order."""
    one = audit_shape.decode(orjson.dumps(ticket()))
    many = audit_shape.decode(orjson.dumps([ticket(action="redeemed"), ticket()]))
    assert [a.record.action for a in one] == ["purchased"]
    assert [a.record.action for a in many] == ["redeemed", "purchased"]
    assert one[0].time_ms == 1746094500000


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"{not json", "body", "not valid JSON"),
        (b"\xff\xfe", "body", "not valid JSON"),
        (b"[]", "body", "empty array"),
        (orjson.dumps({"action": "purchased"}), "type", "required"),
        (orjson.dumps(ticket(type="seat_audit")), "type", "Invalid value"),
        (orjson.dumps(ticket(action="exchanged")), "action", "Invalid enum value"),
        (orjson.dumps([ticket(), ticket(occurred_at="May 1")]), "[1].occurred_at", "RFC 3339"),
        (orjson.dumps(ticket(occurred_at="2025-05-01T10:15:00")), "occurred_at", "offset"),
        (orjson.dumps(ticket(event_id="")), "event_id", "1 to 256"),
        (orjson.dumps(ticket(event_id="x" * 257)), "event_id", "1 to 256"),
        (orjson.dumps(ticket(attributes={"seat": "A1"})), "attributes.seat", "unknown field"),
        (orjson.dumps(ticket(attributes={"price_paid": True})), "attributes.price_paid", "bool"),
        (orjson.dumps(ticket(colour="red")), "colour", "unknown field"),
    ],
)
def test_bad_records_name_the_field(body: bytes, field: str, reason: str) -> None:
    """Every refusal names the field and says why."""
    error = error_of(body)
    assert error.field == field
    assert reason in error.reason


def test_occurred_at_in_any_offset_is_epoch_ms() -> None:
    """Offsets are honoured, fractions kept to the millisecond, extreme years do not crash."""
    assert audit_shape.parse_occurred_at("2025-05-01T12:15:00.5+02:00") == 1746094500500
    assert audit_shape.parse_occurred_at("0001-01-01T00:00:00+23:59") < 0
    assert audit_shape.parse_occurred_at("9999-12-31T23:59:59-23:59") > 0
    assert audit_shape.format_ms(1746094500000) == "2025-05-01T10:15:00Z"
    assert audit_shape.format_ms(1746094500123) == "2025-05-01T10:15:00.123Z"


# --- item ids ---------------------------------------------------------------------------


def test_item_id_prefers_the_events_own_id() -> None:
    """event_id, then source_message_id, then source_request_id(#position), then a hash."""
    record = TicketAudit(action="redeemed", occurred_at="2025-05-01T10:15:00Z")
    assert ids.item_id(msgspec.structs.replace(record, event_id="e1"), message_id="m") == "e1"
    assert ids.item_id(record, message_id="m", request_id="r") == "m"
    assert ids.item_id(record, request_id="r") == "r"
    assert ids.item_id(record, request_id="r", position=2) == "r#2"
    assert ids.item_id(record).startswith(ids.HASH_PREFIX)
    assert ids.item_id(record, message_id="x" * 300).startswith(ids.HASH_PREFIX)


def test_content_id_is_stable_and_tells_content_apart() -> None:
    """Equal content gives the same hash; a changed attribute gives another one."""
    a = TicketAudit(action="redeemed", occurred_at="2025-05-01T10:15:00Z")
    b = TicketAudit(action="redeemed", occurred_at="2025-05-01T10:15:00Z", event_id="ignored")
    c = TicketAudit(
        action="redeemed",
        occurred_at="2025-05-01T10:15:00Z",
        attributes=TicketAttributes(ticket_order_id="o2"),
    )
    assert ids.content_id(a) == ids.content_id(b) != ids.content_id(c)


def test_replayed_bodies_get_the_same_item_ids() -> None:
    """Decoding the same body twice (a sender's retry) gives the same ids, in both shapes."""
    body = orjson.dumps([ticket(), ticket(action="redeemed")])
    assert [a.record.event_id for a in audit_shape.decode(body)] == [
        a.record.event_id for a in audit_shape.decode(body)
    ]
    batch = orjson.dumps(mp_batch(mp_ticket(), mp_ticket("Redeemed"), source_request_id=None))
    first = [a.record.event_id for a in mparticle_shape.decode(batch, bulk=False).accepted]
    again = [a.record.event_id for a in mparticle_shape.decode(batch, bulk=False).accepted]
    assert first == again
    assert len(set(first)) == 2


# --- the mParticle shape ----------------------------------------------------------------


def mp_ticket(name: str = "Purchased", **data: Any) -> dict[str, Any]:
    event_data: dict[str, Any] = {
        "event_name": name,
        "custom_event_type": "transaction",
        "timestamp_unixtime_ms": 1746094500000,
        "custom_attributes": {"ticket_order_id": "ord-1", "price_paid": "25.00", "new": "x"},
    }
    return {"event_type": "custom_event", "data": event_data | data}


def mp_payment(action: str = "purchase", **data: Any) -> dict[str, Any]:
    event_data: dict[str, Any] = {
        "timestamp_unixtime_ms": 1746094500000,
        "product_action": {"action": action, "transaction_id": "ord-1", "total_amount": -10.5},
        "custom_attributes": {"gateway_id": "stripe"},
    }
    return {"event_type": "commerce_event", "data": event_data | data}


def mp_batch(*events: dict[str, Any], **fields: Any) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "environment": "production",
        "source_request_id": "req-1",
        "user_identities": {"email": "a@example.com", "mobile_number": "+15550001"},
        "events": list(events),
    }
    return {k: v for k, v in (batch | fields).items() if v is not None}


def test_transaction_custom_events_become_ticket_audits() -> None:
    """event_name is the action in any case; attributes and identities carry over."""
    body = orjson.dumps(mp_batch(mp_ticket("FORCE_REDEEMED", source_message_id="m-1")))
    (accepted,) = mparticle_shape.decode(body, bulk=False).accepted
    record = accepted.record
    assert isinstance(record, TicketAudit)
    assert record.action == "force_redeemed"
    assert record.event_id == "m-1"
    assert record.occurred_at == "2025-05-01T10:15:00Z"
    assert (record.email, record.mobile_number) == ("a@example.com", "+15550001")
    assert record.attributes.ticket_order_id == "ord-1"
    assert record.order_key() == "ord-1"


def test_purchase_and_refund_commerce_events_become_gateway_audits() -> None:
    """transaction_id is the cart id, total_amount the (negative for refunds) amount."""
    body = orjson.dumps([mp_batch(mp_payment("refund"))])
    (accepted,) = mparticle_shape.decode(body, bulk=True).accepted
    record = accepted.record
    assert isinstance(record, GatewayAudit)
    assert record.action == "refund"
    assert record.attributes.cart_id == "ord-1"
    assert record.attributes.total_amount == -10.5
    assert record.attributes.gateway_id == "stripe"
    assert record.event_id == "req-1"


def test_other_events_are_skipped_and_counted() -> None:
    """Other event types, custom event types, actions and product actions are counted."""
    body = orjson.dumps(
        mp_batch(
            {"event_type": "screen_view", "data": {"screen_name": "x"}},
            mp_ticket("Exchanged"),
            mp_ticket(custom_event_type="navigation"),
            mp_payment("add_to_cart"),
            mp_ticket(),
        )
    )
    decoded = mparticle_shape.decode(body, bulk=False)
    assert [a.record.event_id for a in decoded.accepted] == ["req-1#4"]
    assert decoded.skipped == {"unsupported_event": 3, "unknown_action": 1}


def test_event_time_falls_back_to_the_occured_at_attribute_then_the_batch() -> None:
    """Without timestamp_unixtime_ms: ticketure_occured_at (sic), then the batch's time."""
    attrs = {"ticketure_occured_at": "2025-05-01 10:15:00"}
    body = orjson.dumps(mp_batch(mp_ticket(timestamp_unixtime_ms=None, custom_attributes=attrs)))
    (accepted,) = mparticle_shape.decode(body, bulk=False).accepted
    assert accepted.time_ms == 1746094500000
    body = orjson.dumps(
        mp_batch(mp_ticket(timestamp_unixtime_ms=None), timestamp_unixtime_ms=1746094501000)
    )
    (accepted,) = mparticle_shape.decode(body, bulk=False).accepted
    assert accepted.record.occurred_at == "2025-05-01T10:15:01Z"


@pytest.mark.parametrize(
    ("doc", "bulk", "field", "reason"),
    [
        (
            mp_batch(mp_ticket(timestamp_unixtime_ms=None)),
            False,
            "events[0].data.timestamp_unixtime_ms",
            "required",
        ),
        (mp_batch(mp_ticket(event_name=7)), False, "events[0].data.event_name", "Expected `str`"),
        (
            mp_batch(mp_ticket(custom_event_type="sale")),
            False,
            "events[0].data.custom_event_type",
            "Invalid enum",
        ),
        ({"event_type": "custom_event"}, False, "event_type", "unknown field"),
        (
            mp_batch({"event_type": "mystery", "data": {}}),
            False,
            "events[0].event_type",
            "Invalid enum",
        ),
        (mp_batch(user_identities={"fax": "1"}), False, "user_identities.fax", "unknown field"),
        (mp_batch(environment="staging"), False, "environment", "Invalid enum"),
        (
            [mp_batch(), mp_batch(mp_payment(product_action={}))],
            True,
            "[1].events[0].data.product_action.action",
            "required",
        ),
        (mp_batch(), True, "body", "Expected `array`"),
        ([mp_batch()] * 101, True, "body", "at most 100"),
        ([], True, "body", "empty array"),
    ],
)
def test_bad_batches_name_the_field(doc: Any, bulk: bool, field: str, reason: str) -> None:
    """mParticle-shaped bodies the schema refuses are refused naming the field."""
    error = error_of(orjson.dumps(doc), shape="bulk" if bulk else "one")
    assert error.field == field
    assert reason in error.reason


def test_encode_batch_round_trips() -> None:
    """A record encoded as Ticketure's mParticle batch decodes back to the same record."""
    records: list[AuditRecord] = [
        TicketAudit(
            action="transfer_to",
            occurred_at="2025-05-01T10:15:00Z",
            event_id="e-1",
            email="a@example.com",
            attributes=TicketAttributes(ticket_order_id="o", price_paid="12.50", seller="S"),
        ),
        GatewayAudit(
            action="refund",
            occurred_at="2025-05-01T10:15:00Z",
            event_id="e-2",
            mobile_number="+15550001",
            attributes=GatewayAttributes(cart_id="o", total_amount="-12.50", gateway_id="cash"),
        ),
    ]
    for record in records:
        body = orjson.dumps(mparticle_shape.encode_batch(record, source_request_id="r"))
        (accepted,) = mparticle_shape.decode(body, bulk=False).accepted
        assert accepted.record == record


# --- never anything but DecodeError -----------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=30)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "type",
        "action",
        "occurred_at",
        "event_id",
        "attributes",
        "events",
        "event_type",
        "data",
        "custom_event_type",
        "event_name",
        "product_action",
        "user_identities",
        "timestamp_unixtime_ms",
        "custom_attributes",
        "source_request_id",
    ]
)
nearly_valid = st.recursive(
    json_values,
    lambda inner: st.dictionaries(keys, inner, max_size=6) | st.lists(inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | nearly_valid.map(orjson.dumps))
def test_decoders_raise_only_decode_errors(body: bytes) -> None:
    """Whatever the bytes, every decoder answers records or a DecodeError, nothing else."""
    for decode in (
        audit_shape.decode,
        lambda b: mparticle_shape.decode(b, bulk=False),
        lambda b: mparticle_shape.decode(b, bulk=True),
    ):
        try:
            decode(body)
        except DecodeError as exc:
            field = exc.field
        else:
            field = "decoded"
        assert field
