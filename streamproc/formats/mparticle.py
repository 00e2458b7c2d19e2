"""mParticle's Events API batch, as msgspec Structs, in two views of one schema.

What streamproc sends (``Batch`` and the structs it holds) is a strict subset of
mParticle's schema; what a sender may post to it (``Posted*``: Ticketure's Push API posts
mParticle batches to the receiver) is the whole schema, so a batch mParticle would accept
is never refused for a field we do not use. Both follow mParticle's published batch schema
(draft-07) and share its limits.

The batch streamproc sends:

Published as ``schemas/mparticle/batch.schema.json``; tests check the two against each
other and against mParticle's own schema. Optional fields default to ``None`` and
``omit_defaults`` leaves them out, so no ``null`` reaches mParticle. The ``Meta``
constraints mirror the schema's (and mParticle's documented limits); msgspec enforces them
only when decoding, so a batch read back from ``mparticle.batches`` is checked for free,
while building one costs nothing extra (the mapper enforces the limits itself, see
``limits.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# mParticle's documented limits: event and attribute names 256 characters (longer is
# truncated by mParticle), attribute values 4096, 100 attributes per event, a batch at most
# 128 KB, a request at most 256 KB, at most 100 batches per bulk request. "KB" can be read
# two ways, so each side takes the safe one: the batches streamproc writes keep to 128,000
# bytes (MAX_BATCH_BYTES), while what mParticle takes is read as 128 KiB and 256 KiB (the
# simulator refuses only past those, and deliver dead-letters only what mParticle would
# surely refuse).
MAX_NAME = 256
MAX_VALUE = 4096
MAX_ATTRIBUTES = 100
MAX_BATCH_BYTES = 128_000
MAX_BULK_BATCHES = 100
ACCEPTED_BATCH_BYTES = 128 * 1024
ACCEPTED_REQUEST_BYTES = 256 * 1024

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


# ---------------------------------------------------------------------------------------
# What a sender may post: every property of mParticle's schema (draft-07) is named, as the
# batch, user_identities and product_action allow no others; types and enums as mParticle
# has them. An event's ``data`` is decoded by event type, only for the two types Ticketure
# sends (custom_event, commerce_event).


# mParticle's "String" definition: any JSON scalar.
String = str | bool | int | float | None

EventType = Literal[
    "session_start",
    "session_end",
    "screen_view",
    "custom_event",
    "crash_report",
    "opt_out",
    "first_run",
    "push_registration",
    "application_state_transition",
    "push_message",
    "network_performance",
    "breadcrumb",
    "profile",
    "commerce_event",
    "user_attribute_change",
    "user_identity_change",
    "uninstall",
]
PostedCustomEventType = Literal[
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "other",
    "media",
]
CommerceEventType = (
    PostedCustomEventType
    | Literal[
        "add_to_cart",
        "remove_from_cart",
        "checkout",
        "checkout_option",
        "click",
        "view_detail",
        "purchase",
        "refund",
        "promotion_view",
        "promotion_click",
        "add_to_wishlist",
        "remove_from_wishlist",
        "impression",
        "attribution",
        "consent_granted",
        "consent_denied",
    ]
)
ProductActionName = Literal[
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "add_to_wishlist",
    "remove_from_wish_list",  # sic, as mParticle spells it
]


class PostedUserIdentities(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    other: String = None
    customer_id: String = None
    facebook: String = None
    twitter: String = None
    google: String = None
    microsoft: String = None
    yahoo: String = None
    email: String = None
    alias: String = None
    facebook_custom_audience_id: String = None
    other_id_2: String = None
    other_id_3: String = None
    other_id_4: String = None
    other_id_5: String = None
    other_id_6: String = None
    other_id_7: String = None
    other_id_8: String = None
    other_id_9: String = None
    other_id_10: String = None
    mobile_number: String = None
    phone_number_2: String = None
    phone_number_3: String = None


class PostedProductAction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: ProductActionName
    checkout_step: int | None = None
    checkout_options: String = None
    product_action_list: String = None
    product_list_source: String = None
    transaction_id: str | None = None
    affiliation: String = None
    total_amount: float | None = None
    tax_amount: float | None = None
    shipping_amount: float | None = None
    coupon_code: String = None
    products: list[dict[str, Any]] | None = None


# An event's custom_attributes: mParticle's schema takes any "String" (JSON scalar) as a
# value; the values are checked one by one after decoding, so a refusal names the attribute.
PostedAttributes = dict[str, Any]


class PostedCustomEventData(msgspec.Struct, kw_only=True):
    event_name: str
    custom_event_type: PostedCustomEventType
    timestamp_unixtime_ms: int | None = None
    source_message_id: str | None = None
    custom_attributes: PostedAttributes | None = None


class PostedCommerceEventData(msgspec.Struct, kw_only=True):
    product_action: PostedProductAction | None = None
    custom_event_type: CommerceEventType | None = None
    event_name: str | None = None
    currency_code: String = None
    timestamp_unixtime_ms: int | None = None
    source_message_id: str | None = None
    custom_attributes: PostedAttributes | None = None


class PostedEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    event_type: EventType
    data: msgspec.Raw  # decoded by event type: only ours are looked into


class PostedBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One batch; every property of mParticle's schema is named, as it allows no others."""

    source_request_id: String = None
    events: list[PostedEvent] | None = None
    user_identities: PostedUserIdentities | None = None
    environment: Literal["development", "production"] = "production"
    timestamp_unixtime_ms: int | None = None
    device_info: Any = None
    application_info: Any = None
    user_attributes: Any = None
    deleted_user_attributes: Any = None
    api_key: Any = None
    api_keys: Any = None
    ip: Any = None
    integration_attributes: Any = None
    context: Any = None
    partner_identity: Any = None
    partner_identities: Any = None
    source_info: Any = None
    mp_deviceid: Any = None
    attribution_info: Any = None
    batch_id: Any = None
    mpid: Any = None
    origin_mpid: Any = None
    sdk_version: Any = None
    consent_state: Any = None
    job_id: Any = None
