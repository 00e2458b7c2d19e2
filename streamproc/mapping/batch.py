"""The subset of mParticle's Events API batch that streamproc emits, as msgspec Structs.

Published as ``schemas/mparticle/batch.schema.json``; tests check the two against each
other and against mParticle's own schema. Optional fields default to ``None`` and
``omit_defaults`` leaves them out, so no ``null`` reaches mParticle. The ``Meta``
constraints mirror the schema's (and mParticle's documented limits); msgspec enforces them
only when decoding, so a batch read back from ``mparticle.batches`` is checked for free,
while building one costs nothing extra (the mapper enforces the limits itself, see
``limits.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# mParticle's documented limits: event and attribute names 256 characters (longer is
# truncated by mParticle), attribute values 4096, 100 attributes per event, 128 KB a batch
# (read as 128,000 bytes, the stricter reading).
MAX_NAME = 256
MAX_VALUE = 4096
MAX_ATTRIBUTES = 100
MAX_BATCH_BYTES = 128_000

UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

Uuid = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
Timestamp = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_VALUE)]
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_VALUE)]
Identity = Annotated[str, msgspec.Meta(min_length=1)]
AttributeName = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
AttributeValue = Text | float | bool
CustomAttributes = Annotated[
    dict[AttributeName, AttributeValue], msgspec.Meta(max_length=MAX_ATTRIBUTES)
]
ProductAttributes = Annotated[dict[AttributeName, Text], msgspec.Meta(max_length=MAX_ATTRIBUTES)]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]

Environment = Literal["development", "production"]
CustomEventType = Literal["transaction", "other"]
Action = Literal[
    "add_to_cart", "remove_from_cart", "checkout", "checkout_option", "purchase", "refund"
]
CheckoutStep = Annotated[int, msgspec.Meta(ge=1, le=5)]
Quantity = Annotated[float, msgspec.Meta(gt=0)]


class UserIdentities(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The identity keys mParticle accepts that streamproc may be configured to fill."""

    customer_id: Identity | None = None
    email: Identity | None = None
    mobile_number: Identity | None = None
    other: Identity | None = None
    other_id_2: Identity | None = None
    other_id_3: Identity | None = None
    other_id_4: Identity | None = None
    other_id_5: Identity | None = None
    other_id_6: Identity | None = None
    other_id_7: Identity | None = None
    other_id_8: Identity | None = None
    other_id_9: Identity | None = None
    other_id_10: Identity | None = None
    phone_number_2: Identity | None = None
    phone_number_3: Identity | None = None


IDENTITY_TYPES: frozenset[str] = frozenset(UserIdentities.__struct_fields__)


class Product(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    id: NonEmptyText
    name: NonEmptyText
    quantity: Quantity
    category: Text | None = None
    variant: Text | None = None
    price: float | None = None
    custom_attributes: ProductAttributes | None = None


class ProductAction(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    action: Action
    checkout_step: CheckoutStep | None = None
    checkout_options: Text | None = None
    transaction_id: NonEmptyText | None = None
    total_amount: float | None = None
    products: list[Product] | None = None


class CustomEventData(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    timestamp_unixtime_ms: Timestamp
    source_message_id: Uuid
    event_name: Name
    custom_event_type: CustomEventType
    custom_attributes: CustomAttributes | None = None


class CommerceEventData(
    msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    timestamp_unixtime_ms: Timestamp
    source_message_id: Uuid
    currency_code: Currency
    product_action: ProductAction
    custom_attributes: CustomAttributes | None = None


class ScreenViewData(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    timestamp_unixtime_ms: Timestamp
    source_message_id: Uuid
    screen_name: Name
    custom_attributes: CustomAttributes | None = None


class CustomEvent(
    msgspec.Struct, tag="custom_event", tag_field="event_type", forbid_unknown_fields=True
):
    data: CustomEventData


class CommerceEvent(
    msgspec.Struct, tag="commerce_event", tag_field="event_type", forbid_unknown_fields=True
):
    data: CommerceEventData


class ScreenView(
    msgspec.Struct, tag="screen_view", tag_field="event_type", forbid_unknown_fields=True
):
    data: ScreenViewData


Event = CustomEvent | CommerceEvent | ScreenView


class Batch(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One mParticle batch: one user, the events of one source item."""

    environment: Environment
    source_request_id: Uuid
    events: Annotated[list[Event], msgspec.Meta(min_length=1)]
    user_identities: UserIdentities | None = None


ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(Batch)


def encode(batch: Batch) -> bytes:
    return ENCODER.encode(batch)


def decode(raw: bytes) -> Batch:
    """A batch from ``mparticle.batches``; msgspec.ValidationError if it breaks the schema."""
    return DECODER.decode(raw)
