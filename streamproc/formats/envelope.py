"""The envelope of every record on the pipeline's topics: its headers, and the sources.

Every record carries, beside its value, where it came from (``source``, and the account or
push sender), the item's id and time, and when it entered Kafka (DESIGN.md); dead letters
add their reason and origin topic. Values are UTF-8 text.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class Source(StrEnum):
    """Where an item came from: the ``source`` header, metric labels, id namespaces."""

    TICKETMATIC = "ticketmatic"
    TICKETURE = "ticketure"

    @property
    def header(self) -> bytes:
        return self.value.encode()


# Header names carried by every record (DESIGN.md: source, account, item id, entry time).
H_SOURCE = "source"
H_ACCOUNT = "account"
H_SENDER = "sender"
H_ITEM_ID = "item_id"
H_ITEM_TIME = "item_time_ms"
H_RECEIVED = "received_ms"
H_REASON = "dlq_reason"
H_ORIGIN_TOPIC = "origin_topic"

Headers = list[tuple[str, bytes]]


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The first value of header ``name`` as text, or None (also for a header without one)."""
    for key, value in headers or ():
        if key == name:
            return None if value is None else value.decode("utf-8", "replace")
    return None
