"""What the source mappers share: the refusal of an item, and the batch they build.

A mapper raises :class:`ItemError` for an item it cannot map (a required field missing or
unusable); the router turns it into an ``Unmappable`` outcome for the dead-letter topic.
It is never raised past :func:`streamproc.mapping.router.map_record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from streamproc.errors import StreamprocError
from streamproc.formats.mparticle import Batch
from streamproc.mapping.limits import Scalar

# reason codes of Unmappable outcomes (the DLQ's reason_code header): a small fixed set.
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
TOO_LARGE = "too_large"
UNDECODABLE = "undecodable"
UNKNOWN_SOURCE = "unknown_source"


class ItemError(StreamprocError):
    """The item cannot be mapped; ``field`` names where (``data.order.id``), ``reason`` why."""

    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.code = code
        self.field = field
        self.reason = reason


class Built(msgspec.Struct, kw_only=True):
    """A mapper's result before encoding: the batch, its partition key, the item's time."""

    key: str
    batch: Batch
    item_time_ms: int


def text(value: str | int | float | None) -> str | None:
    """An id or name as text; None for None and for the empty string."""
    if value is None:
        return None
    result = value if isinstance(value, str) else str(value)
    return result or None


def scalar_pairs(
    data: Mapping[str, Any], skip: frozenset[str] = frozenset()
) -> list[tuple[str, Scalar]]:
    """Fields of an item of an unknown kind as attribute pairs: scalars as they are, nested
    values as their JSON text (mParticle attributes are scalars), nulls and ``skip`` left out.
    """
    pairs: list[tuple[str, Scalar]] = []
    for key, value in data.items():
        if value is None or key in skip:
            continue
        if isinstance(value, str | int | float | bool):
            pairs.append((key, value))
            continue
        try:
            pairs.append((key, msgspec.json.encode(value).decode()))
        except RecursionError:
            # Decoded just before, but maybe from a shallower stack than this encode.
            raise ItemError(UNDECODABLE, key, "nested too deep to forward") from None
    return pairs
