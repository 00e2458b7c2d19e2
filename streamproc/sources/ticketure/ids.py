"""Item ids of Ticketure audit records: what dedupe further on keys on.

A pushed event keeps the same item id however often it is pushed, so retries by the sender
are removed downstream. In order of preference the id is:

1. the event's own id (``event_id`` of our record shape; ``source_message_id`` of an
   mParticle event, mParticle's per-event id);
2. the mParticle batch's ``source_request_id`` (stable across a sender's retries by
   mParticle's own contract), suffixed with the event's position when the batch holds
   several events;
3. a hash of the record's canonical content (``content_id``).

mParticle's numeric ``event_id`` is not used: SDKs draw it at random per send, so a retry
could carry a new one.
"""

from __future__ import annotations

import hashlib

import msgspec

from streamproc.sources.ticketure.records import ENCODER, AuditRecord

MAX_ID_LENGTH = 256
HASH_PREFIX = "sha256:"


def content_id(record: AuditRecord) -> str:
    """A stable id from the record's content (its ``event_id`` left out).

    msgspec encodes struct fields in declaration order, so equal records give equal bytes;
    values keep their JSON type (``"12.50"`` and ``12.5`` are different content).
    """
    canonical = ENCODER.encode(msgspec.structs.replace(record, event_id=None))
    return HASH_PREFIX + hashlib.sha256(canonical).hexdigest()[:32]


def item_id(
    record: AuditRecord,
    *,
    message_id: str | None = None,
    request_id: str | None = None,
    position: int | None = None,
) -> str:
    """The record's item id by the rules above (``position`` is None for a lone event).

    An id longer than ``MAX_ID_LENGTH`` is replaced by its hash, so it stays stable and
    distinct without growing every header and dedupe entry.
    """
    if record.event_id:
        chosen = record.event_id
    elif message_id:
        chosen = message_id
    elif request_id:
        chosen = request_id if position is None else f"{request_id}#{position}"
    else:
        return content_id(record)
    if len(chosen) > MAX_ID_LENGTH:
        return HASH_PREFIX + hashlib.sha256(chosen.encode()).hexdigest()[:32]
    return chosen


def with_item_id(
    record: AuditRecord,
    *,
    message_id: str | None = None,
    request_id: str | None = None,
    position: int | None = None,
) -> AuditRecord:
    """A copy of ``record`` whose ``event_id`` is its item id (see :func:`item_id`)."""
    chosen = item_id(record, message_id=message_id, request_id=request_id, position=position)
    if chosen == record.event_id:
        return record
    return msgspec.structs.replace(record, event_id=chosen)
