"""mParticle's limits: names, attribute counts and lengths, batch size; amounts."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.formats.mparticle import MAX_BATCH_BYTES
from streamproc.mapping.amounts import AmountError, to_number
from streamproc.mapping.router import Unmappable
from tests.mapping.helpers import CheckBatch, event, mapped, tm


def pageview(**data: Any) -> dict[str, Any]:
    return {
        "id": "1661438970777-0",
        "ts": "2022-09-13T10:09:30",
        "type": "webshop:pageview",
        "data": {"page": "summary", "ref": "u1", **data},
    }


def ticket(n: int, price_id: str = "580") -> dict[str, Any]:
    return {
        "id": str(10000 + n),
        "price": "20",
        "servicecharge": "1.5",
        "tickettypepriceid": price_id,
        "tickettypeid": "92",
        "tickettypename": "tickets",
        "pricetypename": "normal",
        "eventid": "10003",
        "eventname": "dance performance 2",
    }


def checkout_start(tickets: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    return {
        "id": "1661359739319-0",
        "ts": "2022-09-13T12:08:59",
        "type": "webshop:checkout_start",
        "data": {"ref": "u1", "order": {"id": "398", "tickets": tickets}, **data},
    }


def test_long_screen_name_is_cut_and_counted(check_batch: CheckBatch) -> None:
    """A name over 256 characters is cut to 256 and counted as name."""
    result = mapped(tm(pageview(page="p" * 300)))
    assert event(check_batch(result.batch))["data"]["screen_name"] == "p" * 256
    assert result.truncations == {"name": 1}


def test_long_attribute_names_and_values_are_cut(check_batch: CheckBatch) -> None:
    """Attribute names over 256 and values over 4096 characters are cut and counted."""
    params = {"n" * 300: "v", "long": "x" * 5000, "ok": "y"}
    result = mapped(tm(pageview(params=params)))
    attrs = event(check_batch(result.batch))["data"]["custom_attributes"]
    assert attrs == {"n" * 256: "v", "long": "x" * 4096, "ok": "y"}
    assert result.truncations == {"attribute_name": 1, "attribute_value": 1}


def test_at_most_100_attributes(check_batch: CheckBatch) -> None:
    """Past 100 attributes the rest are dropped and counted: the order id, then by name."""
    params = {f"p{i:03}": str(i) for i in reversed(range(150))}  # JSON order is no rule
    result = mapped(tm(pageview(params=params, orderid="7")))
    attrs = event(check_batch(result.batch))["data"]["custom_attributes"]
    assert list(attrs) == ["orderid"] + [f"p{i:03}" for i in range(99)]
    assert result.truncations == {"attributes": 51}


def test_large_order_of_identical_tickets_is_one_line(check_batch: CheckBatch) -> None:
    """2,000 identical tickets are one line of quantity 2,000; the id list is cut, counted."""
    result = mapped(tm(checkout_start([ticket(i) for i in range(2000)])))
    products = event(check_batch(result.batch))["data"]["product_action"]["products"]
    assert len(products) == 1
    assert products[0]["quantity"] == 2000
    ticket_ids = products[0]["custom_attributes"]["ticket_id"]
    assert ticket_ids.startswith("10000,10001,10002,")
    assert len(ticket_ids) == 4096
    assert result.truncations == {"attribute_value": 1}


def test_large_order_of_distinct_tickets_is_cut(check_batch: CheckBatch) -> None:
    """Distinct lines that do not fit are dropped from the end, and counted."""
    tickets = [ticket(i, price_id=f"{i:05}-{'z' * 100}") for i in range(2000)]
    result = mapped(tm(checkout_start(tickets)))
    assert MAX_BATCH_BYTES - 1000 < len(result.batch) <= MAX_BATCH_BYTES
    products = event(check_batch(result.batch))["data"]["product_action"]["products"]
    assert products[0]["id"].startswith("00000-")
    assert result.truncations["batch_size"] == 1
    assert result.truncations["products"] == 2000 - len(products)


def test_large_attributes_are_dropped_to_fit(check_batch: CheckBatch) -> None:
    """100 attributes of 4096 characters are past 128 KB: the largest go first."""
    params = {f"p{i:03}": ("x" if i % 2 else "é") * 4096 for i in range(100)}
    result = mapped(tm(pageview(params=params)))
    assert len(result.batch) <= MAX_BATCH_BYTES
    attrs = event(check_batch(result.batch))["data"]["custom_attributes"]
    assert result.truncations["attributes"] == 100 - len(attrs)
    assert all(v[0] == "x" for v in attrs.values())  # the two-byte ones went first
    assert result.truncations["batch_size"] == 1


def test_batch_too_large_even_when_trimmed_is_unmappable() -> None:
    """A batch that cannot fit (a gigantic ref) is Unmappable(too_large)."""
    outcome = tm(pageview(ref="r" * 200_000))
    assert isinstance(outcome, Unmappable)
    assert outcome.reason_code == "too_large"


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("20", 20),
        ("20.00", 20),
        ("12.50", 12.5),
        ("-40.00", -40),
        (" 7 ", 7),
        ("1e3", 1000),
        ("0.1", 0.1),
        (42, 42),
        (2.5, 2.5),
        ("", None),
        (None, None),
    ],
)
def test_amounts_become_numbers(value: str | int | float | None, number: float | None) -> None:
    """Decimal strings become ints when integral, floats otherwise."""
    result = to_number(value)
    assert result == number
    assert type(result) is type(number)


@pytest.mark.parametrize(
    "value", ["abc", "NaN", "sNaN", "Infinity", "-inf", "1e400", "1e15", "20,50", 10**16]
)
def test_bad_amounts_are_refused(value: str | int) -> None:
    """What is not a finite decimal of sane size raises AmountError."""
    with pytest.raises(AmountError):
        to_number(value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True])
def test_non_finite_and_booleans_are_refused(value: float) -> None:
    """Infinite, NaN and boolean values are not amounts."""
    with pytest.raises(AmountError):
        to_number(value)
