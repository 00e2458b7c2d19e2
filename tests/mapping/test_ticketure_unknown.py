"""Ticketure attributes without a field (``unknown_attributes``) -> mParticle custom attributes."""

from __future__ import annotations

from streamproc.formats.mparticle import MAX_ATTRIBUTES, MAX_NAME, MAX_VALUE
from tests.mapping.helpers import CheckBatch, event, mapped, tu
from tests.mapping.test_ticketure import gateway_record, ticket_record


def test_unknown_attributes_are_forwarded_after_the_known_ones(check_batch: CheckBatch) -> None:
    """Both kinds forward them as sent (booleans too); a known name is never overwritten."""
    unknown = {"seat_row": "F", "vip": True, "tier": 3, "gone": None, "price_paid": "99"}
    unknown["currency"] = "EUR"
    ticket = mapped(tu(ticket_record("redeemed", unknown_attributes=unknown)))
    attrs = event(check_batch(ticket.batch))["data"]["custom_attributes"]
    assert (attrs["seat_row"], attrs["vip"], attrs["tier"]) == ("F", True, 3)
    assert "gone" not in attrs
    assert attrs["price_paid"] == 21.5  # the record's own field wins
    assert attrs["currency"] == "USD"
    assert list(attrs).index("seat_row") > list(attrs).index("ticket_type")
    payment = mapped(tu(gateway_record("purchase", unknown_attributes={"terminal": "T-4"})))
    data = event(check_batch(payment.batch))["data"]
    assert data["custom_attributes"]["terminal"] == "T-4"
    assert ticket.truncations == payment.truncations == {}


def test_unknown_attributes_stay_within_mparticles_limits(check_batch: CheckBatch) -> None:
    """Past 100 attributes the unknown ones are dropped (never a known one or currency), long
    names and values cut: each cut counted."""
    unknown: dict[str, object] = {f"new_{i}": i for i in range(121)}
    result = mapped(tu(ticket_record("purchased", unknown_attributes=unknown)))
    attrs = event(check_batch(result.batch))["data"]["custom_attributes"]
    assert len(attrs) == MAX_ATTRIBUTES
    assert (attrs["price_paid"], attrs["currency"]) == (21.5, "USD")
    assert [k for k in attrs if k.startswith("new_")] == [f"new_{i}" for i in range(79)]
    # 20 known + currency + 121 unknown: the last 42 unknown ones are dropped.
    assert result.truncations == {"attributes": 42}
    long_name = {"n" * 300: "v" * 5000}
    cut = mapped(tu(ticket_record("purchased", unknown_attributes=long_name)))
    attrs = event(check_batch(cut.batch))["data"]["custom_attributes"]
    assert attrs["n" * MAX_NAME] == "v" * MAX_VALUE
    assert cut.truncations == {"attribute_name": 1, "attribute_value": 1}
