"""Ticketure audit records -> mParticle batches: the nine ticket actions and two payments."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streamproc.formats.ticketure import GATEWAY_ACTIONS, TICKET_ACTIONS
from streamproc.mapping.ids import source_message_id, source_request_id
from streamproc.mapping.router import MappingContext, Unknown, Unmappable, map_record
from tests.mapping.helpers import CheckBatch, event, mapped, tu

# The names mParticle shows for Ticketure's ticket actions (its integration page).
EVENT_NAMES = {
    "purchased": "Purchased",
    "redeemed": "Redeemed",
    "force_redeemed": "Force_redeemed",
    "refunded": "Refunded",
    "transfer_from": "Transfer_from",
    "transfer_to": "Transfer_to",
    "unredeemed": "Unredeemed",
    "invalidated": "Invalidated",
    "revalidated": "Revalidated",
}
OCCURRED = "2024-05-01T12:30:15Z"
OCCURRED_MS = int(datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC).timestamp() * 1000)


def ticket_record(action: str, **fields: Any) -> dict[str, Any]:
    """A ticket_audit record with every documented attribute set."""
    record: dict[str, Any] = {
        "type": "ticket_audit",
        "action": action,
        "occurred_at": OCCURRED,
        "event_id": "evt-1",
        "email": "Ann@Example.com",
        "mobile_number": "+3212345678",
        "attributes": {
            "price_paid": "21.50",
            "ticket_type": "Adult",
            "cart_number": "C-1001",
            "channel_id": "web",
            "financial_adjusted_price": "20.00",
            "financial_adjustment_revenue": "18.00",
            "ticket_adjusted_value": "20.00",
            "seller": "Museum",
            "event_session_start": "2024-05-02T10:00:00Z",
            "event_session_end": "2024-05-02T12:00:00Z",
            "ticketure_event_category": "General",
            "ticketure_event_name": "Museum Entry",
            "ticketure_occured_at": "2024-05-01 12:30:15",
            "ticket_group": "Individual",
            "ticket_order_id": "ord-77",
            "ticket_order_number": "1001",
            "ticketure_outside_fee_fixed": "1.50",
            "ticketure_outside_fee_percent": "0",
            "ticketure_inside_fee_fixed": "2.00",
            "ticketure_inside_fee_percent": "6.5",
        },
    }
    record.update(fields)
    return record


def gateway_record(action: str, **fields: Any) -> dict[str, Any]:
    """A gateway_audit record with every documented attribute set."""
    record: dict[str, Any] = {
        "type": "gateway_audit",
        "action": action,
        "occurred_at": OCCURRED,
        "email": "ann@example.com",
        "attributes": {
            "cart_id": "cart-9",
            "cart_number": "C-1001",
            "gateway_id": "stripe",
            "gl_code": "4000",
            "gateway_payment_identifier": "4242",
            "gateway_payment_name": "Visa",
            "gateway_token": "ch_1",
            "gateway_related_token": "ch_0" if action == "refund" else None,
            "total_amount": "-43.00" if action == "refund" else "43.00",
        },
    }
    record.update(fields)
    return record


def test_event_names_cover_all_actions() -> None:
    """The table covers exactly the nine ticket actions the record format knows."""
    assert set(EVENT_NAMES) == set(TICKET_ACTIONS)


@pytest.mark.parametrize("action", TICKET_ACTIONS)
def test_ticket_action_is_transaction_custom_event(action: str, check_batch: CheckBatch) -> None:
    """A ticket action: custom_event, type transaction, named as mParticle shows it."""
    result = mapped(tu(ticket_record(action), item_id=f"tu-{action}"))
    doc = check_batch(result.batch)
    ev = event(doc)
    data = ev["data"]
    assert result.item_type == f"ticket_audit:{action}"
    assert result.item_time_ms == OCCURRED_MS
    assert result.key == "ann@example.com"
    assert result.truncations == {}
    assert ev["event_type"] == "custom_event"
    assert (data["event_name"], data["custom_event_type"]) == (EVENT_NAMES[action], "transaction")
    assert data["timestamp_unixtime_ms"] == OCCURRED_MS
    assert data["source_message_id"] == source_message_id("ticketure", f"tu-{action}", 0)
    assert doc["source_request_id"] == source_request_id("ticketure", f"tu-{action}")
    # mParticle matches identities exactly: one person, one casing.
    assert doc["user_identities"] == {"email": "ann@example.com", "mobile_number": "+3212345678"}
    attrs = data["custom_attributes"]
    assert attrs["price_paid"] == 21.5
    assert attrs["financial_adjusted_price"] == 20
    assert attrs["ticketure_inside_fee_percent"] == 6.5
    assert attrs["ticket_type"] == "Adult"
    assert attrs["ticketure_occured_at"] == "2024-05-01 12:30:15"
    assert attrs["currency"] == "USD"
    assert len(attrs) == 21


@pytest.mark.parametrize("action", GATEWAY_ACTIONS)
def test_gateway_action_is_commerce_event(action: str, check_batch: CheckBatch) -> None:
    """A payment: commerce purchase/refund, transaction_id = cart id, a positive total."""
    result = mapped(tu(gateway_record(action)))
    doc = check_batch(result.batch)
    data = event(doc)["data"]
    assert result.item_type == f"gateway_audit:{action}"
    assert event(doc)["event_type"] == "commerce_event"
    assert data["currency_code"] == "USD"
    assert data["product_action"] == {
        "action": action,
        "transaction_id": "cart-9",
        "total_amount": 43,  # a refund's total is the amount refunded
    }
    signed = data["custom_attributes"].get("signed_total_amount")
    assert signed == (-43 if action == "refund" else None)  # Ticketure's own sign, kept
    assert "cart_id" not in data["custom_attributes"]
    assert "total_amount" not in data["custom_attributes"]
    assert data["custom_attributes"]["gateway_id"] == "stripe"
    assert doc["user_identities"] == {"email": "ann@example.com"}


def test_ticketure_currency_from_config() -> None:
    """The configured Ticketure currency is the commerce event's currency."""
    result = mapped(tu(gateway_record("purchase"), ctx=MappingContext(ticketure_currency="CAD")))
    assert b'"currency_code":"CAD"' in result.batch


@pytest.mark.parametrize(
    ("fields", "key", "identities"),
    [
        ({"email": " Ann@Example.com "}, "ann@example.com", {"email": "ann@example.com"}),
        ({"email": None, "mobile_number": "+32 1"}, "+32 1", {"mobile_number": "+32 1"}),
        ({"email": "", "mobile_number": None}, "ord-77", None),
    ],
)
def test_key_is_the_user_else_the_order(
    fields: dict[str, Any],
    key: str,
    identities: dict[str, str] | None,
    check_batch: CheckBatch,
) -> None:
    """Key: email, else mobile number, else order key; identities only those present."""
    record = ticket_record("redeemed", mobile_number=None)
    record.update(fields)
    result = mapped(tu(record))
    doc = check_batch(result.batch)
    assert result.key == key
    assert doc.get("user_identities") == identities


def test_key_falls_back_to_cart_then_item_id() -> None:
    """With no user the key is the cart id (payments); with no order either, the item id."""
    record = gateway_record("purchase", email=None)
    record["attributes"]["cart_id"] = "c"
    del record["email"]
    result = mapped(tu(record, item_id="p-5"))
    assert result.key == "c"
    record2 = ticket_record("redeemed", email=None, mobile_number=None)
    record2["attributes"]["ticket_order_id"] = None
    record2["attributes"]["cart_number"] = None
    assert mapped(tu(record2, item_id="p-6")).key == "item:p-6"


@pytest.mark.parametrize(
    ("occurred_at", "attribute", "expected"),
    [
        ("2024-05-01T12:30:15Z", None, OCCURRED_MS),
        ("2024-05-01T14:30:15+02:00", None, OCCURRED_MS),
        ("2024-05-01T12:30:15", None, OCCURRED_MS),
        ("2024-05-01t12:30:15z", None, OCCURRED_MS),
        ("2024-05-01T12:30:15.123456Z", None, OCCURRED_MS + 123),
        ("1714566615", None, OCCURRED_MS),
        ("1714566615123", None, OCCURRED_MS + 123),
        ("", "2024-05-01 12:30:15", OCCURRED_MS),
        ("", "1714566615", OCCURRED_MS),
    ],
)
def test_event_time(occurred_at: str, attribute: str | None, expected: int) -> None:
    """The event time is occurred_at, else ticketure_occured_at: ISO 8601 or epoch s/ms."""
    record = ticket_record("redeemed", occurred_at=occurred_at)
    record["attributes"]["ticketure_occured_at"] = attribute
    assert mapped(tu(record)).item_time_ms == expected


@pytest.mark.parametrize(
    ("record", "code", "field"),
    [
        (ticket_record("redeemed", occurred_at="soon"), "bad_field", "occurred_at"),
        (ticket_record("redeemed", occurred_at="-5"), "bad_field", "occurred_at"),
        (
            ticket_record("redeemed", occurred_at="0001-01-01T00:00:00+14:00"),
            "bad_field",
            "occurred_at",
        ),
        (ticket_record("redeemed", occurred_at="1969-12-31T23:59:59Z"), "bad_field", "occurred_at"),
        (gateway_record("purchase", occurred_at=""), "missing_field", "occurred_at"),
    ],
)
def test_bad_time_is_unmappable(record: dict[str, Any], code: str, field: str) -> None:
    """No usable time gives Unmappable naming occurred_at."""
    record["attributes"].pop("ticketure_occured_at", None)
    outcome = tu(record)
    assert isinstance(outcome, Unmappable), outcome
    assert outcome.reason_code == code
    assert outcome.reason.startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("cart_id", None, "missing_field"),
        ("total_amount", None, "missing_field"),
        ("total_amount", "lots", "bad_field"),
        ("total_amount", "Infinity", "bad_field"),
    ],
)
def test_payment_without_cart_or_total_is_unmappable(field: str, value: Any, code: str) -> None:
    """A payment needs its cart id and a numeric total: Unmappable naming the attribute."""
    record = gateway_record("refund")
    record["attributes"][field] = value
    outcome = tu(record)
    assert isinstance(outcome, Unmappable), outcome
    assert (outcome.item_type, outcome.reason_code) == ("gateway_audit:refund", code)
    assert outcome.reason.startswith(f"attributes.{field}: ")


def test_bad_amount_attribute_is_left_out_and_counted(check_batch: CheckBatch) -> None:
    """An amount attribute that is not a number is omitted and counted."""
    record = ticket_record("purchased")
    record["attributes"]["price_paid"] = "free"
    result = mapped(tu(record))
    attrs = event(check_batch(result.batch))["data"]["custom_attributes"]
    assert "price_paid" not in attrs
    assert result.truncations == {"invalid_value": 1}


def test_numbers_sent_as_numbers_stay(check_batch: CheckBatch) -> None:
    """Amounts sent as JSON numbers pass as numbers."""
    record = ticket_record("purchased")
    record["attributes"]["price_paid"] = 21.5
    record["attributes"]["cart_number"] = 1001
    attrs = event(check_batch(mapped(tu(record)).batch))["data"]["custom_attributes"]
    assert (attrs["price_paid"], attrs["cart_number"]) == (21.5, 1001)


def test_ids_are_deterministic() -> None:
    """Same record and item id: same bytes; another item id: other ids."""
    record = ticket_record("redeemed")
    assert mapped(tu(record, "a")).batch == mapped(tu(record, "a")).batch
    assert source_request_id("ticketure", "a").encode() not in mapped(tu(record, "b")).batch


def test_unknown_action_is_counted() -> None:
    """An action streamproc does not know is Unknown, labelled kind:action."""
    assert tu(ticket_record("scanned")) == Unknown("ticket_audit:scanned")
    assert tu({"type": "seat_audit", "action": "moved", "occurred_at": OCCURRED}) == Unknown(
        "seat_audit:moved"
    )


def test_unknown_action_forwarded_as_other(check_batch: CheckBatch) -> None:
    """With forward_unknown, an unknown action is a custom event of type other."""
    record = ticket_record("scanned")
    record["attributes"]["gate"] = {"no": 4}
    result = mapped(tu(record, ctx=MappingContext(forward_unknown=True)))
    assert result.forwarded is True
    assert result.item_type == "ticket_audit:scanned"
    assert result.key == "ann@example.com"
    doc = check_batch(result.batch)
    data = event(doc)["data"]
    assert (data["event_name"], data["custom_event_type"]) == ("Scanned", "other")
    assert data["custom_attributes"]["gate"] == '{"no":4}'
    assert data["custom_attributes"]["price_paid"] == 21.5
    assert result.item_time_ms == OCCURRED_MS


def test_broken_record_is_undecodable() -> None:
    """A known action with an unknown attribute is not Unknown but undecodable."""
    record = ticket_record("redeemed")
    record["attributes"]["surprise"] = 1
    outcome = tu(record)
    assert isinstance(outcome, Unmappable)
    assert (outcome.item_type, outcome.reason_code) == ("ticket_audit:redeemed", "undecodable")
    assert "surprise" in outcome.reason


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b'{"action": "redeemed"}', b'"x"'])
def test_garbage_is_undecodable(raw: bytes) -> None:
    """Bytes that are no audit record give Unmappable(undecodable)."""
    outcome = map_record("ticketure", raw, "x", None, MappingContext(forward_unknown=True))
    assert isinstance(outcome, Unmappable)
    assert (outcome.item_type, outcome.reason_code) == ("undecodable", "undecodable")


def test_unknown_source_is_unmappable() -> None:
    """A source other than ticketmatic or ticketure is Unmappable(unknown_source)."""
    outcome = map_record("eventbrite", b"{}", "x", None, MappingContext())
    assert outcome == Unmappable(
        "unknown", "unknown_source", "source 'eventbrite' is not ticketmatic|ticketure"
    )
