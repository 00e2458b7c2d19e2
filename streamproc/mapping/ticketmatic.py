"""Ticketmatic eventstream items -> mParticle batches (DESIGN.md, "Mapping to mParticle").

- ``add_tickets`` / ``add_products``: commerce ``add_to_cart``, the added lines as products;
- ``remove_tickets`` / ``remove_products``: commerce ``remove_from_cart``, the removed lines;
- ``checkout_start``: commerce ``checkout``, step 1, the order's contents;
- ``checkout_addcustomerinfo``: commerce ``checkout``, step 2;
- ``checkout_adddeliveryinfo``: commerce ``checkout_option``, step 3, the delivery scenario;
- ``checkout_addpaymentinfo``: commerce ``checkout_option``, step 4, the payment scenario;
- ``checkout_initiatepayment``: commerce ``checkout``, step 5;
- ``checkout_confirm``: commerce ``purchase``, the order's id and total, its contents;
- ``pageview``: ``screen_view``, ``screen_name`` = page, params as custom attributes.

The user is the visitor's ``ref`` (required: it is the only thing that names them); the
order's (or page view's) contact id is a second identity when present. Commerce events
carry ``order_id`` and ``saleschannel_id`` as custom attributes. Required beyond ``ref``:
at least one line for add/remove, the order for checkout_start and checkout_confirm, the
order's id and a valid total for checkout_confirm, the page for pageview. A product's price
that is not a number is left out and counted (``invalid_value``).
"""

from __future__ import annotations

from collections.abc import Callable

from streamproc.formats.envelope import Source
from streamproc.formats.mparticle import (
    Action,
    Batch,
    CommerceEvent,
    CommerceEventData,
    CustomEvent,
    CustomEventData,
    Event,
    Product,
    ProductAction,
    ScreenView,
    ScreenViewData,
    UserIdentities,
)
from streamproc.formats.ticketmatic import TmData, TmItem, TmOrder, TmProduct, TmTicket, ts_ms
from streamproc.mapping.amounts import AmountError, to_number
from streamproc.mapping.common import BAD_FIELD, MISSING_FIELD, Built, ItemError, text
from streamproc.mapping.context import MappingContext
from streamproc.mapping.ids import source_message_id, source_request_id
from streamproc.mapping.limits import Limits, Scalar

SOURCE = Source.TICKETMATIC


class _Item:
    """What every event of one item needs: its time, ids, currency and the limits."""

    __slots__ = ("account", "ctx", "item", "item_id", "limits", "time_ms")

    def __init__(
        self, item: TmItem, item_id: str, account: str | None, ctx: MappingContext, limits: Limits
    ) -> None:
        self.item = item
        self.item_id = item_id
        self.account = account
        self.ctx = ctx
        self.limits = limits
        self.time_ms = ts_ms(item.ts)
        if self.time_ms < 0:
            raise ItemError(BAD_FIELD, "ts", f"{item.ts!r} is before 1970")

    def commerce(
        self, action: ProductAction, attributes: list[tuple[str, Scalar]] | None = None
    ) -> CommerceEvent:
        return CommerceEvent(
            CommerceEventData(
                timestamp_unixtime_ms=self.time_ms,
                source_message_id=source_message_id(SOURCE, self.item_id, 0),
                currency_code=self.ctx.currency(self.account),
                product_action=action,
                custom_attributes=self.limits.attributes(
                    attributes
                    if attributes is not None
                    else _order_attributes(self.item.data.order)
                ),
            )
        )


def build(
    item: TmItem,
    normalized_type: str,
    item_id: str,
    account: str | None,
    ctx: MappingContext,
    limits: Limits,
) -> Built:
    """The batch of a known item type (``normalized_type`` in KNOWN_TYPES, ``webshop:`` cut).

    Raises ItemError naming the field when a required one is missing or unusable.
    """
    key, identities = user(item.data, account, ctx)
    it = _Item(item, item_id, account, ctx, limits)
    event = _BUILDERS[normalized_type](it)
    return Built(key=key, batch=_batch(ctx, item_id, identities, event), item_time_ms=it.time_ms)


def build_other(
    item: TmItem,
    name: str,
    attributes: list[tuple[str, Scalar]],
    item_id: str,
    account: str | None,
    ctx: MappingContext,
    limits: Limits,
) -> Built:
    """An item of a type streamproc does not know, as a custom event of type ``other``."""
    key, identities = user(item.data, account, ctx)
    it = _Item(item, item_id, account, ctx, limits)
    event = CustomEvent(
        CustomEventData(
            timestamp_unixtime_ms=it.time_ms,
            source_message_id=source_message_id(SOURCE, item_id, 0),
            event_name=limits.name(name),
            custom_event_type="other",
            custom_attributes=limits.attributes(attributes),
        )
    )
    return Built(key=key, batch=_batch(ctx, item_id, identities, event), item_time_ms=it.time_ms)


def user(data: TmData, account: str | None, ctx: MappingContext) -> tuple[str, UserIdentities]:
    """The partition key (``account:ref``) and identities of the item's visitor."""
    ref = data.ref
    if not ref:
        raise ItemError(MISSING_FIELD, "data.ref", "missing or empty: it names the visitor")
    contact = text(data.order.customerid if data.order is not None else None) or text(
        data.customerid
    )
    identities = {ctx.ref_identity: ref}
    if contact is not None:
        identities[ctx.contact_identity] = contact
    return f"{account or ''}:{ref}", UserIdentities(**identities)


def _batch(ctx: MappingContext, item_id: str, identities: UserIdentities, event: Event) -> Batch:
    return Batch(
        environment=ctx.environment,
        source_request_id=source_request_id(SOURCE, item_id),
        events=[event],
        user_identities=identities,
    )


def _order_attributes(order: TmOrder | None) -> list[tuple[str, Scalar]]:
    if order is None:
        return []
    return [("order_id", text(order.id)), ("saleschannel_id", text(order.saleschannelid))]


def _require_order(it: _Item) -> TmOrder:
    if it.item.data.order is None:
        raise ItemError(MISSING_FIELD, "data.order", "missing")
    return it.item.data.order


def ticket_product(ticket: TmTicket, path: str, limits: Limits) -> Product:
    """A ticket as a product: id = tickettypepriceid (or tickettypeid), name = event name +
    ticket type + price type, category = event name, variant = price type, quantity 1.
    """
    product_id = text(ticket.tickettypepriceid) or text(ticket.tickettypeid)
    if product_id is None:
        raise ItemError(MISSING_FIELD, f"{path}.tickettypepriceid", "and tickettypeid missing")
    parts = [p for p in (ticket.eventname, ticket.tickettypename, ticket.pricetypename) if p]
    servicecharge = limits.amount(ticket.servicecharge)
    return Product(
        id=limits.value(product_id),
        name=limits.value(" - ".join(parts) if parts else product_id),
        quantity=1,
        category=limits.value(ticket.eventname) if ticket.eventname else None,
        variant=limits.value(ticket.pricetypename) if ticket.pricetypename else None,
        price=limits.amount(ticket.price),
        custom_attributes=limits.product_attributes(
            {
                "kind": "ticket",
                "ticket_id": text(ticket.id),
                "event_id": text(ticket.eventid),
                "servicecharge": None if servicecharge is None else str(servicecharge),
            }
        ),
    )


def product_product(product: TmProduct, path: str, limits: Limits) -> Product:
    """A webshop product (voucher, merchandise...): id = productid, name = productname."""
    product_id = text(product.productid) or text(product.id)
    if product_id is None:
        raise ItemError(MISSING_FIELD, f"{path}.productid", "and id missing")
    return Product(
        id=limits.value(product_id),
        name=limits.value(product.productname or product_id),
        quantity=1,
        price=limits.amount(product.price),
        custom_attributes=limits.product_attributes(
            {
                "kind": "product",
                "product_instance_id": text(product.id),
                "producttype": text(product.producttype),
            }
        ),
    )


# The attribute that tells merged lines' instances apart: joined, not compared.
_INSTANCE_ATTRIBUTES = ("ticket_id", "product_instance_id")


def _products(
    tickets: list[TmTicket], products: list[TmProduct], path: str, limits: Limits
) -> list[Product]:
    """The order's lines as mParticle reads them: identical tickets or products (same id,
    name, category, variant, price and attributes but their instance id) are one line
    whose quantity is their count and whose ``ticket_id`` / ``product_instance_id`` lists
    the instances, comma-separated, in order (cut to mParticle's value length, counted).
    Lines keep the order of their first instance; truncation applies after merging."""
    lines: dict[tuple[object, ...], tuple[Product, list[str]]] = {}
    singles = [ticket_product(t, f"{path}.tickets[{i}]", limits) for i, t in enumerate(tickets)]
    singles += [product_product(p, f"{path}.products[{i}]", limits) for i, p in enumerate(products)]
    for product in singles:
        attributes = dict(product.custom_attributes or {})
        instances = [v for a in _INSTANCE_ATTRIBUTES if (v := attributes.pop(a, None))]
        line = (product.id, product.name, product.category, product.variant, product.price)
        key = (*line, tuple(sorted(attributes.items())))
        if key in lines:
            merged, ids = lines[key]
            merged.quantity += product.quantity
            ids += instances
        else:
            lines[key] = (product, instances)
    for product, ids in lines.values():
        if product.quantity > 1 and product.custom_attributes:
            for name in _INSTANCE_ATTRIBUTES:
                if name in product.custom_attributes:
                    product.custom_attributes[name] = limits.value(",".join(ids))
    return [product for product, _ in lines.values()]


def _cart(action: Action, lines: str) -> Callable[[_Item], Event]:
    def build_cart(it: _Item) -> Event:
        data = it.item.data
        products = _products(data.tickets, data.products, "data", it.limits)
        if not products:
            raise ItemError(MISSING_FIELD, f"data.{lines}", "no ticket or product in the item")
        return it.commerce(ProductAction(action=action, products=products))

    return build_cart


def _checkout_start(it: _Item) -> Event:
    order = _require_order(it)
    products = _products(order.tickets, order.products, "data.order", it.limits)
    return it.commerce(ProductAction(action="checkout", checkout_step=1, products=products))


def _step(step: int) -> Callable[[_Item], Event]:
    def build_step(it: _Item) -> Event:
        return it.commerce(ProductAction(action="checkout", checkout_step=step))

    return build_step


def _option(step: int, field: str) -> Callable[[_Item], Event]:
    def build_option(it: _Item) -> Event:
        order = it.item.data.order
        option = text(getattr(order, field)) if order is not None else None
        return it.commerce(
            ProductAction(
                action="checkout_option",
                checkout_step=step,
                checkout_options=None if option is None else it.limits.value(option),
            )
        )

    return build_option


def _confirm(it: _Item) -> Event:
    order = _require_order(it)
    transaction_id = text(order.id)
    if transaction_id is None:
        raise ItemError(MISSING_FIELD, "data.order.id", "missing: it is the transaction id")
    try:
        total = to_number(order.totalamount)
    except AmountError as exc:
        raise ItemError(BAD_FIELD, "data.order.totalamount", str(exc)) from None
    if total is None:
        raise ItemError(MISSING_FIELD, "data.order.totalamount", "missing: it is the total")
    products = _products(order.tickets, order.products, "data.order", it.limits)
    action = ProductAction(
        action="purchase",
        transaction_id=it.limits.value(transaction_id),
        total_amount=total,
        products=products,
    )
    return it.commerce(action)


def _pageview(it: _Item) -> Event:
    data = it.item.data
    if not data.page:
        raise ItemError(MISSING_FIELD, "data.page", "missing or empty: it is the screen name")
    # Params are strings on the wire; anything else is stringified for a stable type. The
    # order id comes first, then the params by name: when more than mParticle's 100
    # attributes come, the same ones are kept whatever order the JSON had.
    pairs: list[tuple[str, Scalar]] = []
    if "orderid" not in data.params:
        pairs.append(("orderid", text(data.orderid)))
    pairs += [
        (k, v if isinstance(v, str) else _param_text(v)) for k, v in sorted(data.params.items())
    ]
    return ScreenView(
        ScreenViewData(
            timestamp_unixtime_ms=it.time_ms,
            source_message_id=source_message_id(SOURCE, it.item_id, 0),
            screen_name=it.limits.name(data.page),
            custom_attributes=it.limits.attributes(pairs),
        )
    )


def _param_text(value: int | float | bool | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_BUILDERS: dict[str, Callable[[_Item], Event]] = {
    "add_tickets": _cart("add_to_cart", "tickets"),
    "add_products": _cart("add_to_cart", "products"),
    "remove_tickets": _cart("remove_from_cart", "tickets"),
    "remove_products": _cart("remove_from_cart", "products"),
    "checkout_start": _checkout_start,
    "checkout_addcustomerinfo": _step(2),
    "checkout_adddeliveryinfo": _option(3, "deliveryscenarioid"),
    "checkout_addpaymentinfo": _option(4, "paymentscenarioid"),
    "checkout_initiatepayment": _step(5),
    "checkout_confirm": _confirm,
    "pageview": _pageview,
}
