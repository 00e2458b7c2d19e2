"""mParticle's limits, enforced while a batch is built, and every cut counted.

mParticle truncates long names itself and drops what is past its other limits, silently.
Cutting here instead makes the result predictable and, above all, visible: each
:class:`Limits` counts what it cut, by kind, and the mapping result carries the counts
(the caller adds them to ``streamproc_map_truncations_total{what}``). The kinds are a
small fixed set: ``name`` (event or screen name past 256 characters), ``attribute_name``
(256), ``attribute_value`` (4096; also product fields), ``attributes`` (past 100 per event,
or dropped to fit the batch size), ``invalid_value`` (an amount that is not a finite
number, or a non-finite attribute, left out), ``products`` (dropped to fit 128 KB),
``batch_size`` (a batch that had to be shrunk to fit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from streamproc.formats.mparticle import MAX_ATTRIBUTES, MAX_NAME, MAX_VALUE, AttributeValue
from streamproc.mapping.amounts import AmountError, Number, to_number

Scalar = str | int | float | bool | None


class Limits:
    """Truncates to mParticle's limits and counts each cut; one per source item."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    def name(self, text: str) -> str:
        """An event or screen name, at most 256 characters."""
        if len(text) > MAX_NAME:
            self.count("name")
            return text[:MAX_NAME]
        return text

    def value(self, text: str) -> str:
        """An attribute value or product field, at most 4096 characters."""
        if len(text) > MAX_VALUE:
            self.count("attribute_value")
            return text[:MAX_VALUE]
        return text

    def amount(self, value: str | int | float | None) -> Number | None:
        """An optional amount as a number; a bad one is left out (None) and counted."""
        try:
            return to_number(value)
        except AmountError:
            self.count("invalid_value")
            return None

    def attributes(self, pairs: Iterable[tuple[str, Scalar]]) -> dict[str, AttributeValue] | None:
        """Event custom attributes: None values skipped, non-finite numbers dropped, names
        and string values cut, at most 100 kept (the first ones); None if nothing is left.
        """
        out: dict[str, AttributeValue] = {}
        dropped = 0
        for key, raw in pairs:
            if raw is None:
                continue
            value: AttributeValue
            if isinstance(raw, str):
                value = self.value(raw)
            elif isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) > 2**53:
                # JSON readers take numbers as doubles: past 2**53 digits are lost (and
                # past 1e308 it is no number at all), so such an id travels as text.
                value = self.value(str(raw))
            elif isinstance(raw, float) and not math.isfinite(raw):
                self.count("invalid_value")
                continue
            else:
                value = raw
            name = self._attribute_name(key)
            if name not in out and len(out) >= MAX_ATTRIBUTES:
                dropped += 1
                continue
            out[name] = value
        self.count("attributes", dropped)
        return out or None

    def product_attributes(self, pairs: Mapping[str, str | None]) -> dict[str, str] | None:
        """Product custom attributes: strings only (mParticle's schema), same limits."""
        out: dict[str, str] = {}
        for key, raw in pairs.items():
            if raw is None:
                continue
            name = self._attribute_name(key)
            if name not in out and len(out) >= MAX_ATTRIBUTES:
                self.count("attributes")
                continue
            out[name] = self.value(raw)
        return out or None

    def _attribute_name(self, key: str) -> str:
        if len(key) > MAX_NAME:
            self.count("attribute_name")
            return key[:MAX_NAME]
        return key
