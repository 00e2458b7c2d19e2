"""Ticketure audit records: the shape ``POST /ticketure/events`` accepts and Kafka carries.

Published as JSON Schema in ``schemas/ticketure/``. Every attribute Ticketure documents
for its mParticle feed is a field here; amounts are decimal strings (numbers are accepted
and kept as sent). ``type`` tells the two kinds apart. On ``ticketure.audit`` every record
has ``event_id`` set to its item id (its own id, else the push's ids, else a content hash),
and ``unknown_attributes`` holds the attributes a push carried that have no field here
(Ticketure may add some): the receiver sets it, senders never send it. Fields left at
their default are not encoded, so a record without unknown attributes reads as before.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Scalar = str | int | float | None
# An attribute without a field: any JSON scalar, as mParticle takes custom attributes.
AnyScalar = str | int | float | bool | None

TicketAction = Literal[
    "purchased",
    "redeemed",
    "force_redeemed",
    "refunded",
    "transfer_from",
    "transfer_to",
    "unredeemed",
    "invalidated",
    "revalidated",
]
GatewayAction = Literal["purchase", "refund"]

TICKET_ACTIONS: tuple[str, ...] = TicketAction.__args__  # type: ignore[attr-defined]
GATEWAY_ACTIONS: tuple[str, ...] = GatewayAction.__args__  # type: ignore[attr-defined]


class TicketAttributes(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    price_paid: Scalar = None
    ticket_type: Scalar = None
    cart_number: Scalar = None
    channel_id: Scalar = None
    financial_adjusted_price: Scalar = None
    financial_adjustment_revenue: Scalar = None
    ticket_adjusted_value: Scalar = None
    seller: Scalar = None
    event_session_start: Scalar = None
    event_session_end: Scalar = None
    ticketure_event_category: Scalar = None
    ticketure_event_name: Scalar = None
    ticketure_occured_at: Scalar = None  # sic: Ticketure's spelling
    ticket_group: Scalar = None
    ticket_order_id: Scalar = None
    ticket_order_number: Scalar = None
    ticketure_outside_fee_fixed: Scalar = None
    ticketure_outside_fee_percent: Scalar = None
    ticketure_inside_fee_fixed: Scalar = None
    ticketure_inside_fee_percent: Scalar = None


class GatewayAttributes(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cart_id: Scalar = None
    cart_number: Scalar = None
    gateway_id: Scalar = None
    gl_code: Scalar = None
    gateway_payment_identifier: Scalar = None
    gateway_payment_name: Scalar = None
    gateway_token: Scalar = None
    gateway_related_token: Scalar = None
    total_amount: Scalar = None


class _Audit(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """How both kinds are encoded. Each declares its own fields: their order is the
    encoding's, which content hashes (:func:`.ids.content_id`) depend on."""


class TicketAudit(_Audit, kw_only=True, tag="ticket_audit"):
    """A ticket was purchased, redeemed, refunded, transferred, voided..."""

    action: TicketAction
    occurred_at: str
    event_id: str | None = None
    email: str | None = None
    mobile_number: str | None = None
    attributes: TicketAttributes = msgspec.field(default_factory=TicketAttributes)
    unknown_attributes: dict[str, AnyScalar] | None = None

    def order_key(self) -> str | None:
        a = self.attributes
        value = a.ticket_order_id if a.ticket_order_id is not None else a.cart_number
        return None if value is None else str(value)


class GatewayAudit(_Audit, kw_only=True, tag="gateway_audit"):
    """A payment was captured (purchase) or refunded (refund, negative total)."""

    action: GatewayAction
    occurred_at: str
    event_id: str | None = None
    email: str | None = None
    mobile_number: str | None = None
    attributes: GatewayAttributes = msgspec.field(default_factory=GatewayAttributes)
    unknown_attributes: dict[str, AnyScalar] | None = None

    def order_key(self) -> str | None:
        a = self.attributes
        value = a.cart_id if a.cart_id is not None else a.cart_number
        return None if value is None else str(value)


AuditRecord = TicketAudit | GatewayAudit

RECORD_DECODER = msgspec.json.Decoder(AuditRecord)
ENCODER = msgspec.json.Encoder()
