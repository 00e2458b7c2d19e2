"""Realistic webshop sessions of tracked visitors, as Ticketmatic's eventstream records them.

A session is one visitor with a ``ref``: page views, tickets and products added (and some
removed), then the checkout steps, each of which a visitor may abandon, up to the
confirmation. Many sessions run at once and their items interleave, while each session's
items stay in order. The shapes follow ``../shared/reference/ticketmatic/
eventstream-items.json``: ids and amounts as strings, the whole order in every item.
Everything comes from one seeded ``random.Random``: the same seed gives the same items.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

Item = tuple[str, dict[str, Any]]  # (type, data)

EVENTS = [
    ("10003", "dance performance 2"),
    ("10004", "symphony no. 5"),
    ("10005", "jazz night"),
    ("10006", "hamlet"),
    ("10007", "family matinee"),
]
# (tickettypepriceid, tickettypeid, tickettypename, pricetypeid, pricetypename, price)
PRICES = [
    ("580", "92", "tickets", "10000", "normal", Decimal("20")),
    ("581", "92", "tickets", "10001", "reduced", Decimal("15")),
    ("582", "93", "balcony", "10000", "normal", Decimal("32.50")),
    ("583", "94", "vip", "10000", "normal", Decimal("75")),
]
SERVICE_CHARGE = {"normal": Decimal("1.50"), "reduced": Decimal("0")}
PRODUCTS = [
    ("10000", "26002", "gift voucher", Decimal("100")),
    ("10001", "26003", "programme booklet", Decimal("5")),
    ("10002", "26004", "drinks voucher", Decimal("12.50")),
]
UNKNOWN_TYPES = ["webshop:apply_promocode", "webshop:add_giftcard", "webshop:login"]
SALESCHANNELS = ["10000", "10001"]


def amount(value: Decimal) -> str:
    """Decimal string as Ticketmatic writes it: ``"20"``, ``"32.5"``."""
    return format(value.normalize(), "f")


class _Counters:
    def __init__(self, rng: random.Random) -> None:
        self.order = 398 + rng.randrange(1000)
        self.ticket = 10634 + rng.randrange(100_000)
        self.product = 10001 + rng.randrange(100_000)
        self.customer = 10016 + rng.randrange(100_000)
        self.visitor = 12345 + rng.randrange(100_000)


class WebshopSessions:
    """An endless, reproducible stream of ``(type, data)`` from interleaved sessions.

    ``concurrent`` sessions are open at a time; ``unknown_fraction`` of the items get a
    type Ticketmatic does not document yet (it warns new types will appear).
    """

    def __init__(self, seed: int = 0, *, concurrent: int = 20, unknown_fraction: float = 0.0):
        self.rng = random.Random(seed)
        self.unknown_fraction = unknown_fraction
        self._ids = _Counters(self.rng)
        self._open: list[Iterator[Item]] = [self._session() for _ in range(max(1, concurrent))]

    def next(self) -> Item:
        """The next item of a randomly chosen open session (a new one replaces a finished)."""
        index = self.rng.randrange(len(self._open))
        while True:
            try:
                item_type, data = next(self._open[index])
                break
            except StopIteration:
                self._open[index] = self._session()
        if self.unknown_fraction and self.rng.random() < self.unknown_fraction:
            item_type = self.rng.choice(UNKNOWN_TYPES)
        return item_type, data

    def take(self, n: int) -> list[Item]:
        return [self.next() for _ in range(n)]

    # --- one visitor ----------------------------------------------------------------------

    def _ref(self) -> str:
        rng = self.rng
        self._ids.visitor += 1
        if rng.random() < 0.5:
            return f"user{self._ids.visitor}"
        # A GA4 client id, a common choice of ref.
        return f"GA1.1.{rng.randrange(10**9, 10**10)}.{rng.randrange(1_600_000_000, 1_800_000_000)}"

    def _session(self) -> Iterator[Item]:
        rng = self.rng
        ref = self._ref()
        self._ids.order += 1
        order: dict[str, Any] = {
            "id": str(self._ids.order),
            "saleschannelid": rng.choice(SALESCHANNELS),
            "customerid": None,
            "deliveryscenarioid": None,
            "paymentscenarioid": None,
            "totalamount": "0",
            "tickets": [],
            "products": [],
        }
        event_id, event_name = rng.choice(EVENTS)
        params = self._params(event_id)
        if rng.random() < 0.7:
            yield self._pageview("events", params, order, ref)
        yield self._pageview("event", params, order, ref)

        tickets = [self._ticket(event_id, event_name) for _ in range(rng.randint(1, 4))]
        order["tickets"] = list(tickets)
        yield "webshop:add_tickets", self._data(order, ref, tickets=tickets)
        if rng.random() < 0.3:
            products = [self._product() for _ in range(rng.randint(1, 2))]
            order["products"] = list(products)
            yield "webshop:add_products", self._data(order, ref, products=products)
        if len(order["tickets"]) > 1 and rng.random() < 0.2:
            gone = order["tickets"].pop()
            yield "webshop:remove_tickets", self._data(order, ref, tickets=[gone])
        if order["products"] and rng.random() < 0.25:
            gone = order["products"].pop()
            yield "webshop:remove_products", self._data(order, ref, products=[gone])
        yield self._pageview("basket", params, order, ref)
        if rng.random() < 0.25:
            return  # left with a full basket

        yield "webshop:checkout_start", self._data(order, ref)
        self._ids.customer += 1
        order["customerid"] = str(self._ids.customer)
        yield "webshop:checkout_addcustomerinfo", self._data(order, ref)
        if rng.random() < 0.1:
            return
        order["deliveryscenarioid"] = rng.choice(["10000", "10001", "10002"])
        yield "webshop:checkout_adddeliveryinfo", self._data(order, ref)
        order["paymentscenarioid"] = rng.choice(["10001", "10002", "10003"])
        yield "webshop:checkout_addpaymentinfo", self._data(order, ref)
        yield "webshop:checkout_initiatepayment", self._data(order, ref)
        if rng.random() < 0.1:
            return  # payment abandoned
        yield "webshop:checkout_confirm", self._data(order, ref)
        yield self._pageview("orderdetail", params, order, ref)

    def _ticket(self, event_id: str, event_name: str) -> dict[str, Any]:
        ttp, tt, tt_name, pt, pt_name, price = self.rng.choice(PRICES)
        self._ids.ticket += 1
        return {
            "id": str(self._ids.ticket),
            "price": amount(price),
            "servicecharge": amount(SERVICE_CHARGE[pt_name]),
            "tickettypepriceid": ttp,
            "tickettypeid": tt,
            "tickettypename": tt_name,
            "pricetypeid": pt,
            "pricetypename": pt_name,
            "eventid": event_id,
            "eventname": event_name,
        }

    def _product(self) -> dict[str, Any]:
        product_id, product_type, name, price = self.rng.choice(PRODUCTS)
        self._ids.product += 1
        return {
            "id": str(self._ids.product),
            "productid": product_id,
            "price": amount(price),
            "producttype": product_type,
            "productname": name,
        }

    def _data(self, order: dict[str, Any], ref: str, **changed: Any) -> dict[str, Any]:
        total = sum(
            (Decimal(t["price"]) + Decimal(t["servicecharge"]) for t in order["tickets"]),
            Decimal(0),
        ) + sum((Decimal(p["price"]) for p in order["products"]), Decimal(0))
        order["totalamount"] = amount(total)
        snapshot = {**order, "tickets": list(order["tickets"]), "products": list(order["products"])}
        return {**changed, "order": snapshot, "ref": ref}

    def _params(self, event_id: str) -> dict[str, Any]:
        rng = self.rng
        return {
            "edit": "yes",
            "flow": rng.choice(["basketwithcheckout", "basket", "checkout"]),
            "skinid": "10000",
            "returnurl": "https://www.example.org/",
            "saleschannelid": "10000",
            "reservemoretickets": "yes",
            "event": event_id,
            "withauthentication": rng.choice(["no", "yes"]),
            "promocode": None,
        }

    def _pageview(self, page: str, params: dict[str, Any], order: dict[str, Any], ref: str) -> Item:
        return "webshop:pageview", {
            "page": page,
            "params": dict(params),
            "orderid": order["id"] if order["tickets"] else None,
            "customerid": order["customerid"],
            "ref": ref,
        }
