"""Ticketmatic eventstream items -> mParticle batches, over every reference item."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamproc.mapping.ids import source_message_id, source_request_id
from streamproc.mapping.router import MappingContext, Unknown, Unmappable, map_record
from tests.mapping.helpers import CheckBatch, event, mapped, tm

# type -> (event_type, action, checkout_step, checkout_options, product ids)
EXPECTED: dict[str, tuple[str, str | None, int | None, str | None, list[str]]] = {
    "webshop:add_tickets": ("commerce_event", "add_to_cart", None, None, ["580"]),
    "webshop:remove_tickets": ("commerce_event", "remove_from_cart", None, None, ["580"]),
    # Identical lines of an item are one product with a quantity (see test_identical_...).
    "webshop:add_products": ("commerce_event", "add_to_cart", None, None, ["10000"]),
    "webshop:remove_products": ("commerce_event", "remove_from_cart", None, None, ["10000"]),
    "webshop:checkout_start": (
        "commerce_event",
        "checkout",
        1,
        None,
        ["580", "10000"],
    ),
    "webshop:checkout_addcustomerinfo": ("commerce_event", "checkout", 2, None, []),
    "webshop:checkout_adddeliveryinfo": ("commerce_event", "checkout_option", 3, "10000", []),
    "webshop:checkout_addpaymentinfo": ("commerce_event", "checkout_option", 4, "10001", []),
    "webshop:checkout_initiatepayment": ("commerce_event", "checkout", 5, None, []),
    "webshop:checkout_confirm": ("commerce_event", "purchase", None, None, ["580"]),
    "webshop:pageview": ("screen_view", None, None, None, []),
}


def reference_items(shared_reference: Path) -> list[dict[str, Any]]:
    """The ten documented items plus checkout_addpaymentinfo, which the docs do not show
    (built from the delivery-info example, whose order has a payment scenario set).
    """
    items: list[dict[str, Any]] = json.loads(
        (shared_reference / "ticketmatic/eventstream-items.json").read_text()
    )
    delivery = next(i for i in items if i["type"] == "webshop:checkout_adddeliveryinfo")
    payment = copy.deepcopy(delivery)
    payment.update(id="1664159739546-0", type="webshop:checkout_addpaymentinfo")
    payment["data"]["order"]["paymentscenarioid"] = "10001"
    return [*items, payment]


@pytest.fixture
def items(shared_reference: Path) -> dict[str, dict[str, Any]]:
    return {i["type"]: i for i in reference_items(shared_reference)}


def epoch_ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).replace(tzinfo=UTC).timestamp() * 1000)


def test_reference_covers_all_eleven_types(items: dict[str, dict[str, Any]]) -> None:
    """The table below covers every type the reference items have, and all eleven."""
    assert set(items) == set(EXPECTED)


@pytest.mark.parametrize("item_type", sorted(EXPECTED))
def test_reference_item_maps_per_design(
    item_type: str, items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """Each item type becomes the event DESIGN.md's table names, valid for both schemas."""
    item = items[item_type]
    result = mapped(tm(item))
    doc = check_batch(result.batch)
    ev = event(doc)
    event_type, action, step, option, product_ids = EXPECTED[item_type]

    assert result.item_type == item_type
    assert result.forwarded is False
    assert result.truncations == {}
    assert result.key == f"acme:{item['data']['ref']}"
    assert result.item_time_ms == epoch_ms(item["ts"])
    assert doc["environment"] == "development"
    assert doc["source_request_id"] == source_request_id("ticketmatic", item["id"])
    assert "timestamp_unixtime_ms" not in doc
    assert ev["event_type"] == event_type
    assert ev["data"]["timestamp_unixtime_ms"] == epoch_ms(item["ts"])
    assert ev["data"]["source_message_id"] == source_message_id("ticketmatic", item["id"], 0)
    assert doc["user_identities"]["customer_id"] == item["data"]["ref"]
    if event_type == "commerce_event":
        pa = ev["data"]["product_action"]
        assert ev["data"]["currency_code"] == "EUR"
        assert pa["action"] == action
        assert pa.get("checkout_step") == step
        assert pa.get("checkout_options") == option
        assert [p["id"] for p in pa.get("products", [])] == product_ids
        assert ev["data"]["custom_attributes"]["order_id"] == item["data"]["order"]["id"]


def test_tickets_are_products_per_design(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """A ticket: id = tickettypepriceid, name = event + type + price type, numeric price."""
    doc = check_batch(mapped(tm(items["webshop:add_tickets"])).batch)
    product = event(doc)["data"]["product_action"]["products"][0]
    assert product == {
        "id": "580",
        "name": "dance performance 2 - tickets - normal",
        "category": "dance performance 2",
        "variant": "normal",
        "quantity": 2,  # the two identical tickets of the documented item, one line
        "price": 20,
        "custom_attributes": {
            "kind": "ticket",
            "ticket_id": "10634,10635",
            "event_id": "10003",
            "servicecharge": "0",
        },
    }


def test_ticket_without_price_id_uses_ticket_type(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """Without tickettypepriceid the product id is the ticket type id; decimals stay exact."""
    item = copy.deepcopy(items["webshop:add_tickets"])
    item["data"]["tickets"][0].update(tickettypepriceid=None, price="12.50")
    products = event(check_batch(mapped(tm(item)).batch))["data"]["product_action"]["products"]
    assert products[0]["id"] == "92"
    assert products[0]["price"] == 12.5


def test_webshop_products_are_products(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """A webshop product: id = productid, name = productname, numeric price."""
    doc = check_batch(mapped(tm(items["webshop:add_products"])).batch)
    product = event(doc)["data"]["product_action"]["products"][0]
    assert (product["id"], product["name"], product["price"], product["quantity"]) == (
        "10000",
        "gift voucher",
        100,
        2,
    )
    assert product["custom_attributes"]["product_instance_id"] == "10001,10002"


def test_only_identical_lines_merge(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """Tickets that differ in price or event stay separate lines, in first-seen order."""
    item = copy.deepcopy(items["webshop:add_tickets"])
    first, second = item["data"]["tickets"][:2]
    third = {**first, "id": "10636", "price": "25"}
    fourth = {**second, "id": "10637"}
    item["data"]["tickets"] = [first, third, second, fourth]
    doc = check_batch(mapped(tm(item)).batch)
    products = event(doc)["data"]["product_action"]["products"]
    assert [(p["price"], p["quantity"]) for p in products] == [(20, 3), (25, 1)]
    assert products[0]["custom_attributes"]["ticket_id"] == "10634,10635,10637"
    assert products[1]["custom_attributes"]["ticket_id"] == "10636"


def test_purchase_carries_order_id_and_total(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """checkout_confirm: transaction_id = order id, total_amount = order total as a number."""
    item = copy.deepcopy(items["webshop:checkout_confirm"])
    item["data"]["order"]["totalamount"] = "40.50"
    pa = event(check_batch(mapped(tm(item)).batch))["data"]["product_action"]
    assert pa["transaction_id"] == "400"
    assert pa["total_amount"] == 40.5
    assert isinstance(pa["total_amount"], float)


def test_pageview_params_become_string_attributes(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """pageview: screen_name = page, params as attributes (nulls left out), contact id."""
    doc = check_batch(mapped(tm(items["webshop:pageview"])).batch)
    data = event(doc)["data"]
    assert data["screen_name"] == "summary"
    assert data["custom_attributes"]["flow"] == "basketwithcheckout"
    assert data["custom_attributes"]["requiredfields"] == ""
    assert data["custom_attributes"]["orderid"] == "400"
    assert "promocode" not in data["custom_attributes"]
    assert all(isinstance(v, str) for v in data["custom_attributes"].values())
    assert doc["user_identities"] == {"customer_id": "user23456", "other_id_2": "10016"}


def test_contact_id_is_second_identity(items: dict[str, dict[str, Any]]) -> None:
    """The order's customer id is the contact identity; absent, only the ref is sent."""
    with_contact = mapped(tm(items["webshop:checkout_addcustomerinfo"]))
    without = mapped(tm(items["webshop:add_tickets"]))
    assert b'"other_id_2":"10016"' in with_contact.batch
    assert b"other_id_2" not in without.batch


def test_identities_follow_configuration(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """ref_identity and contact_identity choose the identity keys."""
    ctx = MappingContext(ref_identity="other", contact_identity="other_id_5")
    doc = check_batch(mapped(tm(items["webshop:checkout_confirm"], ctx=ctx)).batch)
    assert doc["user_identities"] == {"other": "user23456", "other_id_5": "10016"}


@pytest.mark.parametrize(
    ("account", "currency"), [("acme", "EUR"), ("dollars", "USD"), ("other", "EUR"), (None, "EUR")]
)
def test_currency_per_account(
    account: str | None, currency: str, items: dict[str, dict[str, Any]]
) -> None:
    """Currency comes from the account's setting; an unlisted account gets EUR."""
    result = mapped(tm(items["webshop:checkout_confirm"], account=account))
    assert f'"currency_code":"{currency}"'.encode() in result.batch
    assert result.key == f"{account or ''}:user23456"


def test_environment_from_config(items: dict[str, dict[str, Any]]) -> None:
    """The batch's environment is the configured one."""
    result = mapped(tm(items["webshop:pageview"], ctx=MappingContext(environment="production")))
    assert result.batch.startswith(b'{"environment":"production"')


def test_ids_are_deterministic(items: dict[str, dict[str, Any]]) -> None:
    """The same item gives the same bytes; another item id gives other ids."""
    item = items["webshop:add_tickets"]
    first, again = mapped(tm(item)), mapped(tm(item))
    assert first.batch == again.batch
    other = dict(item, id="1661358385340-1")
    moved = mapped(tm(other))
    assert source_request_id("ticketmatic", item["id"]).encode() in first.batch
    assert source_request_id("ticketmatic", item["id"]).encode() not in moved.batch
    assert source_message_id("ticketmatic", item["id"], 0).encode() not in moved.batch


def test_type_spelling_is_tolerated(items: dict[str, dict[str, Any]]) -> None:
    """Case and separator variants of a known type map like the type itself."""
    item = dict(items["webshop:add_tickets"], type="WebShop_Add_Tickets")
    assert mapped(tm(item)).item_type == "webshop:add_tickets"


def test_ts_with_offset(items: dict[str, dict[str, Any]]) -> None:
    """A ts with an explicit offset is converted to UTC epoch ms."""
    item = dict(items["webshop:pageview"], ts="2022-10-01T11:00:00+0200")
    assert mapped(tm(item)).item_time_ms == epoch_ms("2022-10-01T09:00:00")


def _set(item: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = item
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.mark.parametrize(
    ("item_type", "path", "value", "code", "field"),
    [
        ("webshop:add_tickets", "data.ref", None, "missing_field", "data.ref"),
        ("webshop:pageview", "data.ref", "", "missing_field", "data.ref"),
        ("webshop:add_tickets", "data.tickets", [], "missing_field", "data.tickets"),
        ("webshop:remove_products", "data.products", [], "missing_field", "data.products"),
        ("webshop:checkout_start", "data.order", None, "missing_field", "data.order"),
        ("webshop:checkout_confirm", "data.order.id", None, "missing_field", "data.order.id"),
        (
            "webshop:checkout_confirm",
            "data.order.totalamount",
            None,
            "missing_field",
            "data.order.totalamount",
        ),
        (
            "webshop:checkout_confirm",
            "data.order.totalamount",
            "forty",
            "bad_field",
            "data.order.totalamount",
        ),
        (
            "webshop:checkout_confirm",
            "data.order.totalamount",
            "NaN",
            "bad_field",
            "data.order.totalamount",
        ),
        ("webshop:pageview", "data.page", None, "missing_field", "data.page"),
        ("webshop:pageview", "ts", "1969-12-31T23:59:59", "bad_field", "ts"),
    ],
)
def test_missing_required_field_is_unmappable(
    item_type: str,
    path: str,
    value: Any,
    code: str,
    field: str,
    items: dict[str, dict[str, Any]],
) -> None:
    """A required field missing or unusable gives Unmappable naming the field."""
    item = copy.deepcopy(items[item_type])
    _set(item, path, value)
    outcome = tm(item)
    assert isinstance(outcome, Unmappable), outcome
    assert (outcome.item_type, outcome.reason_code) == (item_type, code)
    assert outcome.reason.startswith(f"{field}: ")


def test_ticket_without_any_type_id_is_unmappable(items: dict[str, dict[str, Any]]) -> None:
    """A ticket line with neither tickettypepriceid nor tickettypeid names that line."""
    item = copy.deepcopy(items["webshop:checkout_confirm"])
    item["data"]["order"]["tickets"][1].update(tickettypepriceid=None, tickettypeid=None)
    outcome = tm(item)
    assert isinstance(outcome, Unmappable)
    assert outcome.reason.startswith("data.order.tickets[1].tickettypepriceid: ")


def test_bad_price_is_left_out_and_counted(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """A product price that is not a number is omitted and counted as invalid_value."""
    item = copy.deepcopy(items["webshop:add_tickets"])
    item["data"]["tickets"][0]["price"] = "twenty"
    result = mapped(tm(item))
    products = event(check_batch(result.batch))["data"]["product_action"]["products"]
    assert "price" not in products[0]
    assert products[1]["price"] == 20
    assert result.truncations == {"invalid_value": 1}


def test_unknown_type_is_counted_not_mapped(items: dict[str, dict[str, Any]]) -> None:
    """A type streamproc does not know is Unknown, labelled by its normalized type."""
    item = dict(items["webshop:pageview"], type="Webshop:Gift_Wrap")
    assert tm(item) == Unknown("webshop:gift_wrap")


def test_unknown_type_label_is_bounded(items: dict[str, dict[str, Any]]) -> None:
    """Odd unknown types give a short label of safe characters."""
    item = dict(items["webshop:pageview"], type="webshop:" + "Ä x/" * 50)
    outcome = tm(item)
    assert isinstance(outcome, Unknown)
    assert len(outcome.item_type) <= 64
    assert set(outcome.item_type) <= set("abcdefghijklmnopqrstuvwxyz0123456789:_")


def test_unknown_type_forwarded_as_other(
    items: dict[str, dict[str, Any]], check_batch: CheckBatch
) -> None:
    """With forward_unknown, an unknown type is a custom event of type other."""
    item = copy.deepcopy(items["webshop:pageview"])
    item["type"] = "webshop:gift_wrap"
    item["data"]["wrap"] = {"color": "red"}
    result = mapped(tm(item, ctx=MappingContext(forward_unknown=True)))
    assert result.forwarded is True
    assert result.item_type == "webshop:gift_wrap"
    doc = check_batch(result.batch)
    data = event(doc)["data"]
    assert event(doc)["event_type"] == "custom_event"
    assert (data["event_name"], data["custom_event_type"]) == ("webshop:gift_wrap", "other")
    assert data["custom_attributes"]["page"] == "summary"
    assert data["custom_attributes"]["wrap"] == '{"color":"red"}'
    assert "ref" not in data["custom_attributes"]
    assert doc["user_identities"]["customer_id"] == "user23456"


def test_forwarded_unknown_without_ref_is_unmappable(items: dict[str, dict[str, Any]]) -> None:
    """Forwarding still needs a user: no ref gives Unmappable."""
    item = copy.deepcopy(items["webshop:pageview"])
    item["type"] = "webshop:gift_wrap"
    del item["data"]["ref"]
    outcome = tm(item, ctx=MappingContext(forward_unknown=True))
    assert isinstance(outcome, Unmappable)
    assert outcome.reason_code == "missing_field"


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        (b"not json", "undecodable"),
        (
            b'{"id": "x", "ts": "2022-09-13T11:46:25", "type": "webshop:pageview"}',
            "webshop:pageview",
        ),
        (b'{"id": "1-0", "ts": "yesterday", "type": "webshop:pageview"}', "webshop:pageview"),
        (b'{"id": "1-0", "ts": "2022-09-13T11:46:25", "type": 7}', "undecodable"),
        (b"[]", "undecodable"),
        (
            b'{"id": "1-0", "ts": "0001-01-01T00:00:00+14:00", "type": "webshop:pageview"}',
            "webshop:pageview",
        ),
        (
            b'{"id": "1-0", "ts": "9999-12-31T23:59:59-14:00", "type": "webshop:pageview"}',
            "webshop:pageview",
        ),
    ],
)
def test_undecodable_is_unmappable(raw: bytes, label: str) -> None:
    """Bytes that are not an item give Unmappable(undecodable), labelled by type if any."""
    outcome = map_record("ticketmatic", raw, "1-0", "acme", MappingContext())
    assert isinstance(outcome, Unmappable)
    assert (outcome.item_type, outcome.reason_code) == (label, "undecodable")
    assert outcome.reason
