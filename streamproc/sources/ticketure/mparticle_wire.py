"""mParticle Events API batches: the parts Ticketure's pushes use, as msgspec structs.

Types, enums and closed objects follow mParticle's published batch schema (draft-07):
the batch, ``user_identities`` and ``product_action`` allow no other properties, so each
is listed in full; an event's ``data`` is decoded by event type, only for the two types
Ticketure sends (``custom_event``, ``commerce_event``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

MAX_BULK_BATCHES = 100

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
CustomEventType = Literal[
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
    CustomEventType
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


class UserIdentities(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
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


class ProductAction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
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
CustomAttributes = dict[str, Any]


class CustomEventData(msgspec.Struct, kw_only=True):
    event_name: str
    custom_event_type: CustomEventType
    timestamp_unixtime_ms: int | None = None
    source_message_id: str | None = None
    custom_attributes: CustomAttributes | None = None


class CommerceEventData(msgspec.Struct, kw_only=True):
    product_action: ProductAction | None = None
    custom_event_type: CommerceEventType | None = None
    event_name: str | None = None
    currency_code: String = None
    timestamp_unixtime_ms: int | None = None
    source_message_id: str | None = None
    custom_attributes: CustomAttributes | None = None


class Event(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    event_type: EventType
    data: msgspec.Raw  # decoded by event type: only ours are looked into


class Batch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One batch; every property of mParticle's schema is named, as it allows no others."""

    source_request_id: String = None
    events: list[Event] | None = None
    user_identities: UserIdentities | None = None
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
