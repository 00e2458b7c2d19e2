"""One consumed source record in, what the map stage writes for it out. Pure: no I/O.

:func:`plan` is the map stage's whole per-record path short of Kafka: the record's headers
(source, item id, account, times), its item id (:func:`.identity.item_id_of`), the
mapping's outcome (:func:`.router.map_record`), and for a batch its output key, its
headers and its dedupe hash. It never raises for what a record can hold (any bytes, any
headers, no value at all): what cannot become a batch is an ``Unmappable`` outcome with
its reason. The transaction (:mod:`.transaction`) writes what the plan says, and turns an
exception that escapes it anyway (a bug) into a dead letter of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamproc.formats import envelope
from streamproc.formats.envelope import Source
from streamproc.mapping.common import UNDECODABLE
from streamproc.mapping.identity import item_hash, item_id_of
from streamproc.mapping.router import MapOutcome, Mapped, Unmappable

# (source, value, item id, account) -> outcome; streamproc.mapping.router.map_record.
Mapper = Callable[[str, bytes, str, str | None], MapOutcome]
# Record headers as a consumer hands them over: Kafka allows a header without a value.
RawHeaders = Sequence[tuple[str, bytes | None]]

_SOURCES = frozenset(Source)  # not set(Source) per record: iterating an enum costs ~1 us
# The headers a batch carries on from its source record (and source, item id, time).
_PASSED = frozenset({envelope.H_ACCOUNT, envelope.H_ITEM_TIME, envelope.H_RECEIVED})
# Longer than any visitor, email or order id. A longer key (a Ticketure order id the batch
# cuts to 4096 characters, say) is replaced by its hash: the same for every record of that
# user, so they keep their partition and order, and the record cannot outgrow the topic.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one record: ``outcome`` says which; the rest serves a ``Mapped`` one.

    ``item_id`` is the id dedupe and ``source_request_id`` rest on (``<account>/<id>`` for
    Ticketmatic); ``headers`` are the batch's, ``key`` its output key (the mapping's, or
    its hash past ``MAX_KEY_BYTES``), ``dedupe`` the hash its dedupe state remembers.
    """

    source: str
    item_id: str
    outcome: MapOutcome
    headers: envelope.Headers
    key: bytes = b""
    dedupe: int = 0


def plan(default_source: str, headers: RawHeaders, value: bytes | None, mapper: Mapper) -> Plan:
    """The plan for one record of an input topic whose items come from ``default_source``.

    The ``source`` header wins if it names a known source. A header without a value counts
    as absent; header text that is not UTF-8 is read with replacement characters.
    """
    source = header_id = account = None
    has_time = False
    passed: envelope.Headers = []
    for key, raw in headers:
        if raw is None:
            continue
        if key == envelope.H_SOURCE:
            source = raw.decode("utf-8", "replace")
        elif key == envelope.H_ITEM_ID:
            header_id = raw.decode("utf-8", "replace")
        elif key == envelope.H_ACCOUNT:
            account = raw.decode("utf-8", "replace")
        if key in _PASSED:
            passed.append((key, raw))
            has_time = has_time or key == envelope.H_ITEM_TIME
    if source not in _SOURCES:
        source = default_source
    data = value or b""
    own_id = item_id_of(source, data, header_id)
    item_id = item_id_of(source, data, own_id, account)
    passed.append((envelope.H_SOURCE, source.encode()))
    # The header keeps the source's own id (the account travels in its own header).
    passed.append((envelope.H_ITEM_ID, own_id.encode()))
    if value is None:
        outcome: MapOutcome = Unmappable("undecodable", UNDECODABLE, "value: the record has none")
    else:
        outcome = mapper(source, value, item_id, account)
    if type(outcome) is not Mapped:
        return Plan(source, item_id, outcome, passed)
    if not has_time:
        passed.append((envelope.H_ITEM_TIME, str(outcome.item_time_ms).encode()))
    out_key = outcome.key.encode()
    if len(out_key) > MAX_KEY_BYTES:
        out_key = b"sha256:" + hashlib.sha256(out_key).hexdigest().encode()
    return Plan(source, item_id, outcome, passed, out_key, item_hash(source, item_id))
