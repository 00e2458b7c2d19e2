"""Decoding both push shapes into canonical records, item ids, and the mParticle encoder."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import DecodeError
from streamproc.formats.ticketure import (
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)
from streamproc.sim.pushes import mparticle_batch
from streamproc.sources.ticketure import audit_shape, ids, mparticle_shape


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
    (one,) = audit_shape.decode(orjson.dumps(ticket())).accepted
    many = audit_shape.decode(orjson.dumps([ticket(action="redeemed"), ticket()])).accepted
    assert one.record.action == "purchased"
    assert [a.record.action for a in many] == ["redeemed", "purchased"]
    assert [a.where for a in many] == ["[0]", "[1]"]
    assert (one.time_ms, one.where) == (1746094500000, "")


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"{not json", "body", "not JSON"),
        (b"\xff\xfe", "body", "not JSON"),
        (b"5", "body", "Expected `object | array`"),
        (b'{"type": "ticket_audit", "email": "Jos\xe9"}', "body", "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "[0]", "Expected `object`"),  # no deeper than [0]
        (
            b'{"type": "ticket_audit", "attributes": {"new": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
            "body",
            "nested deeper",
        ),
        (orjson.dumps([ticket(), 5]), "[1]", "Expected `object`"),
        (b"[]", "body", "empty array"),
        (orjson.dumps({"action": "purchased"}), "type", "required"),
        (orjson.dumps(ticket(type="seat_audit")), "type", "Invalid value"),
        (orjson.dumps(ticket(action="exchanged")), "action", "Invalid enum value"),
        (orjson.dumps([ticket(), ticket(occurred_at="May 1")]), "[1].occurred_at", "RFC 3339"),
        (orjson.dumps(ticket(occurred_at="2025-05-01T10:15:00")), "occurred_at", "offset"),
        (orjson.dumps(ticket(event_id="")), "event_id", "1 to 256"),
        (orjson.dumps(ticket(event_id="x" * 257)), "event_id", "1 to 256"),
        (orjson.dumps(ticket(attributes={"seat": ["A1"]})), "attributes.seat", "a string"),
        (orjson.dumps(ticket(unknown_attributes={"seat": "A1"})), "unknown_attributes", "unknown"),
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
    """event_id, then source_message_id, then source_request_id(#position), then the
    idempotency key(#position), then a hash (#n for the n-th same content)."""
    record = TicketAudit(action="redeemed", occurred_at="2025-05-01T10:15:00Z")
    own = msgspec.structs.replace(record, event_id="e1")

    def one(hints: ids.Hints, request_id: str | None = None, rec: AuditRecord = record) -> str:
        (assigned,) = ids.assign([(rec, hints)], request_id)
        return assigned.event_id or ""

    assert one(ids.Hints(message_id="m"), rec=own) == "e1"
    assert one(ids.Hints("m", "r", 2), "k") == "m"
    assert one(ids.Hints(batch_id="r"), "k") == "r"
    assert one(ids.Hints(batch_id="r", batch_position=2), "k") == "r#2"
    assert one(ids.Hints(), "k") == "k"
    assert one(ids.Hints()).startswith(ids.HASH_PREFIX)
    assert one(ids.Hints(message_id="x" * 300)).startswith(ids.HASH_PREFIX)
    twins = [(record, ids.Hints())] * 3
    assert [r.event_id for r in ids.assign(twins, "k")] == ["k#0", "k#1", "k#2"]
    hashed = [r.event_id or "" for r in ids.assign(twins)]
    assert hashed[1:] == [f"{hashed[0]}#2", f"{hashed[0]}#3"]
    assert hashed[0] == ids.content_id(record)


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


def test_content_ids_are_those_of_earlier_versions() -> None:
    """A record without unknown attributes hashes as before the field existed (values
    from the release before it), so a push retried across an upgrade keeps its id."""
    ticket_audit = TicketAudit(
        action="redeemed",
        occurred_at="2025-05-01T10:15:00Z",
        email="a@example.com",
        attributes=TicketAttributes(ticket_order_id="o-1", price_paid=12.5),
    )
    payment = GatewayAudit(
        action="refund",
        occurred_at="2025-05-01T10:15:00Z",
        attributes=GatewayAttributes(cart_id="c", total_amount="-1.00"),
    )
    assert ids.content_id(ticket_audit) == "sha256:49f3ddb418b338337a2749603125cbf0"
    assert ids.content_id(payment) == "sha256:01ea41f1e4af15e2546d0eeb97230b40"
    extended = msgspec.structs.replace(payment, unknown_attributes={"x": 1})
    assert ids.content_id(extended) != ids.content_id(payment)


def test_replayed_bodies_get_the_same_item_ids() -> None:
    """Decoding the same body twice (a sender's retry) gives the same ids, in both shapes."""
    body = orjson.dumps([ticket(), ticket(action="redeemed")])
    assert [a.record.event_id for a in audit_shape.decode(body).accepted] == [
        a.record.event_id for a in audit_shape.decode(body).accepted
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


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


ONE_EVENT = orjson.dumps(mp_batch(mp_ticket(seller="@@")))


@pytest.mark.parametrize(
    ("body", "bulk", "field", "code"),
    [
        (ONE_EVENT.replace(b'"@@"', b'"Jos\xe9"'), False, "body", "not_json"),
        (ONE_EVENT.replace(b'"@@"', deep(1000)), False, "body", "too_deep"),
        (ONE_EVENT.replace(b'"@@"', deep(100_000)), False, "body", "too_deep"),
        (
            b"[" + ONE_EVENT.replace(b'"@@"', deep(1000)) + b"]",
            True,
            "body",
            "too_deep",
        ),
        (
            orjson.dumps(mp_batch(device_info="@@")).replace(b'"@@"', deep(1000)),
            False,
            "body",
            "too_deep",
        ),
        (
            b"[" + orjson.dumps(mp_batch(context="@@")).replace(b'"@@"', deep(1000)) + b"]",
            True,
            "body",
            "too_deep",
        ),
        (deep(5000), True, "[0]", "invalid"),  # refused at the first level, no deeper
        (b'{"environment": "produc\xe9tion"}', False, "body", "not_json"),
        (
            orjson.dumps(mp_batch(mp_ticket(custom_attributes={"seat": {"row": 1}}))),
            False,
            "events[0].data.custom_attributes.seat",
            "invalid",
        ),
        (
            orjson.dumps(mp_batch(mp_ticket(custom_attributes={"price_paid": [1]}))),
            False,
            "events[0].data.custom_attributes.price_paid",
            "invalid",
        ),
    ],
)
def test_undecodable_batches_are_decode_errors_with_a_code(
    body: bytes, bulk: bool, field: str, code: str
) -> None:
    """Invalid UTF-8 and nesting past the decoder's depth, anywhere (an event's data
    included: they were a msgspec error and a RecursionError), are DecodeErrors."""
    error = error_of(body, shape="bulk" if bulk else "one")
    assert (error.field, error.code) == (field, code)


def test_unknown_attributes_are_kept_on_both_shapes_and_known_ones_checked() -> None:
    """An attribute without a field is kept as sent in both shapes; known ones keep their
    types (bool refused in ours, text in mParticle's), and a nested value is refused."""
    new = {"seat": "A1", "vip": True, "row": 7, "note": None}
    ours = orjson.dumps(ticket(attributes={"price_paid": "25.00", **new}))
    (accepted,) = audit_shape.decode(ours).accepted
    assert accepted.record.unknown_attributes == new
    assert isinstance(accepted.record, TicketAudit)
    assert accepted.record.attributes.price_paid == "25.00"
    batch = orjson.dumps(mp_batch(mp_ticket(custom_attributes={"seller": True, **new})))
    (accepted,) = mparticle_shape.decode(batch, bulk=False).accepted
    assert accepted.record.unknown_attributes == new
    assert isinstance(accepted.record, TicketAudit)
    assert accepted.record.attributes.seller == "true"
    payment = orjson.dumps(mp_batch(mp_payment(custom_attributes={"gateway_id": "x", **new})))
    (accepted,) = mparticle_shape.decode(payment, bulk=False).accepted
    assert accepted.record.unknown_attributes == new
    (accepted,) = audit_shape.decode(orjson.dumps(ticket())).accepted
    assert accepted.record.unknown_attributes is None
    error = error_of(orjson.dumps(ticket(attributes={"price_paid": True, "seat": "A"})))
    assert error.field == "attributes.price_paid"


def test_id_less_twins_are_told_apart_by_position_or_idempotency_key() -> None:
    """Identical id-less events: apart within a request (#2), apart across requests with
    different keys, one item across requests without a key (a retry looks the same)."""
    twin = ticket(action="redeemed")
    both = [a.record.event_id for a in audit_shape.decode(orjson.dumps([twin, twin])).accepted]
    assert both[1] == f"{both[0]}#2"
    alone = orjson.dumps(twin)
    first = audit_shape.decode(alone, "push-1").accepted[0].record.event_id
    second = audit_shape.decode(alone, "push-2").accepted[0].record.event_id
    retry = audit_shape.decode(alone, "push-1").accepted[0].record.event_id
    assert (first, second, retry) == ("push-1", "push-2", "push-1")
    assert audit_shape.decode(alone).accepted[0].record.event_id == both[0]
    batch = orjson.dumps(mp_batch(mp_ticket(), mp_ticket(), source_request_id=None))
    keyed = mparticle_shape.decode(batch, bulk=False, request_id="k").accepted
    assert [a.record.event_id for a in keyed] == ["k#0", "k#1"]
    bulk = orjson.dumps([mp_batch(mp_ticket(), source_request_id=None)] * 2)
    keyed = mparticle_shape.decode(bulk, bulk=True, request_id="k").accepted
    assert [(a.record.event_id, a.where) for a in keyed] == [
        ("k#0", "[0].events[0]"),
        ("k#1", "[1].events[0]"),
    ]


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
        body = orjson.dumps(mparticle_batch(record, source_request_id="r"))
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


@st.composite
def spoiled(draw: st.DrawFn) -> bytes:
    """Nearly valid JSON with a value swapped for invalid UTF-8 or deep nesting."""
    body = orjson.dumps(draw(nearly_valid))
    cut = draw(st.integers(0, len(body)))
    poison = draw(st.sampled_from([b'"\xe9"', b"\xff", deep(1200), b"[" * 1200, b'{"a":' * 600]))
    return body[:cut] + poison + body[cut:]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | nearly_valid.map(orjson.dumps) | spoiled())
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
