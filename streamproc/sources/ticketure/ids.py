"""Item ids of Ticketure audit records: what dedupe further on keys on.

A pushed event keeps the same item id however often it is pushed, so retries by the sender
are removed downstream. In order of preference the id is:

1. the event's own id (``event_id`` of our record shape; ``source_message_id`` of an
   mParticle event, mParticle's per-event id);
2. the mParticle batch's ``source_request_id`` (stable across a sender's retries by
   mParticle's own contract), suffixed with the event's position in the batch when the
   batch holds several events;
3. the request's idempotency key (``receiver.idempotency_header``, which a sender keeps
   across its retries), suffixed with the event's position in the request when the
   request holds several events;
4. a hash of the record's canonical content (``content_id``); the second, third... record
   of one request with the same content get ``#2``, ``#3``...

So two events of identical content are told apart when they have ids, when they come in
one request, or when their requests carry different idempotency keys. Two requests of the
same content without any of these are one event to dedupe: nothing in them can tell a
second event from a retry of the first.

mParticle's numeric ``event_id`` is not used: SDKs draw it at random per send, so a retry
could carry a new one. Neither is a per-attempt id such as ``X-Request-Id``, which proxies
may draw anew for each retry.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from streamproc.formats.ticketure import ENCODER, AuditRecord

MAX_ID_LENGTH = 256
HASH_PREFIX = "sha256:"


class Hints(NamedTuple):
    """What a request says about one event besides its content (none of it for our shape)."""

    message_id: str | None = None  # the mParticle event's source_message_id
    batch_id: str | None = None  # its batch's source_request_id
    batch_position: int | None = None  # its position in the batch; None when alone in it


def content_id(record: AuditRecord) -> str:
    """A stable id from the record's content (its ``event_id`` left out).

    The content is every field in declaration order, ``null`` ones too, so equal records
    give equal bytes; values keep their JSON type (``"12.50"`` and ``12.5`` are different
    content). ``unknown_attributes`` counts only when there are some: records without
    them hash as they did before the field existed, so ids stay stable across upgrades.
    """
    canonical: dict[str, object] = {"type": record.__struct_config__.tag}
    for name in record.__struct_fields__:
        canonical[name] = None if name == "event_id" else getattr(record, name)
    if record.unknown_attributes is None:
        del canonical["unknown_attributes"]
    return HASH_PREFIX + hashlib.sha256(ENCODER.encode(canonical)).hexdigest()[:32]


def assign(
    events: Sequence[tuple[AuditRecord, Hints]], request_id: str | None = None
) -> list[AuditRecord]:
    """The records of one request, each with its item id as ``event_id`` (rules above).

    ``request_id`` is the request's idempotency key, if it has one. An id longer than
    ``MAX_ID_LENGTH`` is replaced by its hash, so it stays stable and distinct without
    growing every header and dedupe entry.
    """
    several = len(events) > 1
    same_content: collections.Counter[str] = collections.Counter()
    out: list[AuditRecord] = []
    for position, (record, hints) in enumerate(events):
        if record.event_id:
            chosen = record.event_id
        elif hints.message_id:
            chosen = hints.message_id
        elif hints.batch_id:
            at = hints.batch_position
            chosen = hints.batch_id if at is None else f"{hints.batch_id}#{at}"
        elif request_id:
            chosen = f"{request_id}#{position}" if several else request_id
        else:
            chosen = content_id(record)
            same_content[chosen] += 1
            if same_content[chosen] > 1:
                chosen = f"{chosen}#{same_content[chosen]}"
        if len(chosen) > MAX_ID_LENGTH:
            chosen = HASH_PREFIX + hashlib.sha256(chosen.encode()).hexdigest()[:32]
        if chosen != record.event_id:
            record = msgspec.structs.replace(record, event_id=chosen)
        out.append(record)
    return out
