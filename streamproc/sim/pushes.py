"""The mParticle batches Ticketure's Push API posts, built from audit records.

From ../shared/reference/ticketure: a ``ticket_audit`` reaches mParticle as a custom event
of type ``transaction`` named after its action (``Purchased``, ``Force_redeemed``...), its
attributes as custom attributes; a ``gateway_audit`` as a commerce event whose product
action is ``purchase`` or ``refund``. The user identities (email, mobile number) go on the
batch. The record's ``event_id`` travels as the event's ``source_message_id`` and its time
as ``timestamp_unixtime_ms``; a gateway event's cart id and amount fill the product
action's ``transaction_id`` and ``total_amount``.

Built here, apart from the receiver's decoder, so that the simulator checks it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

import msgspec

from streamproc.formats.ticketure import AuditRecord, TicketAudit

_EPOCH = datetime(1970, 1, 1)


def _epoch_ms(rfc3339: str) -> int:
    parsed = datetime.fromisoformat(rfc3339.upper().replace("Z", "+00:00"))
    # Naive arithmetic stays in range for any year with any offset.
    delta = parsed.replace(tzinfo=None) - _EPOCH - (parsed.utcoffset() or timedelta(0))
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def mparticle_batch(
    record: AuditRecord, *, environment: str = "production", source_request_id: str | None = None
) -> dict[str, Any]:
    """The batch (one event) Ticketure's Push API would send for ``record``."""
    attributes = msgspec.structs.asdict(record.attributes)
    custom = {name: value for name, value in attributes.items() if value is not None}
    custom |= record.unknown_attributes or {}
    data: dict[str, Any] = {
        "timestamp_unixtime_ms": _epoch_ms(record.occurred_at),
        "custom_attributes": custom,
    }
    if record.event_id is not None:
        data["source_message_id"] = record.event_id
    if isinstance(record, TicketAudit):
        data |= {"event_name": record.action.capitalize(), "custom_event_type": "transaction"}
        event = {"event_type": "custom_event", "data": data}
    else:
        action: dict[str, Any] = {"action": record.action}
        if record.attributes.cart_id is not None:
            action["transaction_id"] = str(record.attributes.cart_id)
        with contextlib.suppress(TypeError, ValueError):  # it stays a custom attribute
            action["total_amount"] = float(record.attributes.total_amount)  # type: ignore[arg-type]
        event = {"event_type": "commerce_event", "data": data | {"product_action": action}}
    batch: dict[str, Any] = {"environment": environment, "events": [event]}
    if source_request_id is not None:
        batch["source_request_id"] = source_request_id
    identities = {"email": record.email, "mobile_number": record.mobile_number}
    if any(identities.values()):
        batch["user_identities"] = {k: v for k, v in identities.items() if v}
    return batch
