"""Amounts: decimal strings in, JSON numbers out.

Ticketmatic and Ticketure send amounts as decimal strings ("20", "12.50", "-40.00");
mParticle wants numbers. An integral amount becomes an ``int`` (``"20.00"`` -> ``20``), any
other a ``float`` (``"12.50"`` -> ``12.5``). What is not a finite decimal of sane size
(``"abc"``, ``"NaN"``, ``"Infinity"``, ``"1e400"``, a boolean) is refused with
:class:`AmountError`: JSON has no NaN or infinity, and a made-up number would be worse
than none. The caller decides what a refusal means (see ``router.py``).
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

# No ticket, order or payment comes near 10^15 in any currency; past it a float loses the
# cents, and a huge exponent would make int() build an enormous number.
_BOUND = Decimal(10) ** 15

Number = int | float


class AmountError(ValueError):
    """The value is not a usable amount; the message says why."""


def to_number(value: str | int | float | None) -> Number | None:
    """``None`` for ``None`` or an empty string; the amount as a number; else AmountError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AmountError(f"{value!r} is a boolean, not an amount")
    if isinstance(value, int):
        if abs(value) >= _BOUND:
            raise AmountError(f"{value} is out of range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= _BOUND:
            raise AmountError(f"{value!r} is not a finite amount")
        return value
    known = _SEEN.get(value)
    if known is not None:
        return known
    number = _from_text(value)
    if number is not None and len(value) <= _SEEN_TEXT_MAX:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[value] = number
    return number


# Amount texts repeat (a handful of prices per event): each converted once. Only usable
# amounts of at most _SEEN_TEXT_MAX characters are kept (at most _SEEN_MAX of them, then
# the cache starts over), so a refused one is refused (and counted) every time.
_SEEN: dict[str, Number] = {}
_SEEN_MAX = 4096
_SEEN_TEXT_MAX = 64


def _from_text(value: str) -> Number | None:
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit() and len(text) < 16:
        return int(text)  # the common case ("20"), without a Decimal
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise AmountError(f"{_clip(value)!r} is not a decimal number") from None
    if not amount.is_finite() or abs(amount) >= _BOUND:
        raise AmountError(f"{_clip(value)!r} is not a finite amount")
    if amount == amount.to_integral_value():
        return int(amount)
    return float(amount)


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."
