"""Peer JSON decoded once, with every failure a :class:`DecodeError` naming field and reason.

msgspec does the decoding; this module only turns its three ways of failing into one error
whose ``code`` a metric can count: ``not_json`` (syntax, truncation, invalid UTF-8),
``invalid`` (valid JSON of the wrong shape; the field is named) and ``too_deep``. Depth is
capped by the decoder itself: msgspec guards its recursion, so JSON nested deeper than
Python's recursion limit (about 1,000 levels, where streamproc's formats need fewer than
ten) raises RecursionError before any harm is done, and that is a bad answer like any other.

:func:`check_numbers` refuses numbers too long for any value (``too_large``) before a
decoder turns them into ints that later break ``float()``.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from streamproc.errors import DecodeError

T = TypeVar("T")


def decode_json(decoder: msgspec.json.Decoder[T], data: bytes, what: str) -> T:
    """``decoder.decode(data)``; DecodeError naming ``what`` (or the bad field) otherwise."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in message else what
        raise DecodeError(field, message.split(" - at ")[0], code="invalid") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(what, f"not JSON: {exc}", code="not_json") from None
    except RecursionError:
        raise DecodeError(
            what, "JSON nested deeper than the decoder's depth limit", code="too_deep"
        ) from None


# Ids, amounts and times need a few dozen digits at most. msgspec decodes ints of up to
# 4,300 digits, but float() of one over 308 overflows (OverflowError: a time given as
# such a number did): a number past this is no value of any format here, refused whole.
MAX_DIGITS = 300
_DIGITS = re.compile(rb"\d{%d}" % (MAX_DIGITS + 1))
# A JSON string (skipped whole, escapes included) or a run of too many digits.
_STRING_OR_DIGITS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|\d{%d,}' % (MAX_DIGITS + 1), re.DOTALL)


def check_numbers(data: bytes, what: str) -> None:
    """DecodeError (code ``too_large``) if ``data`` holds a number of over MAX_DIGITS digits.

    Digits inside JSON strings do not count. Cheap for what every record is: one scan for
    such a run of digits, and only if there is one a second to see whether it is a number.
    """
    if _DIGITS.search(data) is None:
        return
    for match in _STRING_OR_DIGITS.finditer(data):
        if not match.group().startswith(b'"'):
            raise DecodeError(
                what,
                f"a number of {len(match.group())} digits at byte {match.start()}, "
                f"more than {MAX_DIGITS}",
                code="too_large",
            )
