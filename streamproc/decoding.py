"""Peer JSON decoded once, with every failure a :class:`DecodeError` naming field and reason.

msgspec does the decoding; this module only turns its three ways of failing into one error
whose ``code`` a metric can count: ``not_json`` (syntax, truncation, invalid UTF-8),
``invalid`` (valid JSON of the wrong shape; the field is named) and ``too_deep``. Depth is
capped by the decoder itself: msgspec guards its recursion, so JSON nested deeper than
Python's recursion limit (about 1,000 levels, where streamproc's formats need fewer than
ten) raises RecursionError before any harm is done, and that is a bad answer like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from streamproc.errors import DecodeError

T = TypeVar("T")


def decode_json(
    decoder: msgspec.json.Decoder[T],
    data: bytes,
    what: str,
    *,
    invalid: Callable[[msgspec.ValidationError], DecodeError] | None = None,
) -> T:
    """``decoder.decode(data)``; DecodeError naming ``what`` (or the bad field) otherwise.

    ``invalid`` names the field of a shape error instead, for callers whose documents sit
    inside a larger one (the receiver names ``[0].events[2].data.event_name``).
    """
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        if invalid is not None:
            raise invalid(exc) from None
        message = str(exc)
        field = message.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in message else what
        raise DecodeError(field, message.split(" - at ")[0], code="invalid") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(what, f"not JSON: {exc}", code="not_json") from None
    except RecursionError:
        raise DecodeError(
            what, "JSON nested deeper than the decoder's depth limit", code="too_deep"
        ) from None
