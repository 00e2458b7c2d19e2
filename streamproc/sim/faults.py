"""What the Ticketmatic simulator answers when told to misbehave, and when.

Pure (no HTTP, no clock reads): :class:`Misbehaviour` is one fault mode with its
parameters, :class:`Script` the answers queued for one account's next requests,
:class:`Outage` a time during which every request of an account fails, and
:func:`oversized_chunks` / :func:`deep_chunks` the bodies that are too big to hold: they
are produced in chunks of at most :data:`CHUNK` bytes, so the simulator's memory stays
bounded whatever size or depth is asked for.
"""

from __future__ import annotations

import typing
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Literal

import msgspec

Mode = Literal[
    "descending",  # the page's items in descending id order
    "future_id",  # the page's last item with an id and ts 100 years ahead
    "runaway_nextid",  # a normal page whose nextid is RUNAWAY_NEXTID
    "skip_nextid",  # a normal page, moreresults true, nextid at now: past items not served
    "creep",  # no items, moreresults true, nextid one sequence past the requested id
    "oversized",  # a 200 of `size` bytes of a valid-looking page, streamed
    "deep",  # a 200 of valid JSON nested `depth` deep (inside an item's data)
    "drip",  # a normal page, `chunk` bytes every `interval` seconds
    "retry_after",  # a 429 whose Retry-After header is `value`, as given
    "reset",  # the connection dropped (TCP reset) without an answer
]
MODES: tuple[Mode, ...] = typing.get_args(Mode)
# The parameters each mode takes; any other is refused rather than silently ignored.
PARAMS: dict[Mode, frozenset[str]] = {
    **{mode: frozenset() for mode in MODES},
    "oversized": frozenset({"size", "content_length"}),
    "deep": frozenset({"depth"}),
    "drip": frozenset({"chunk", "interval"}),
    "retry_after": frozenset({"value"}),
}
# Modes that answer without reading the stream (so without reading the query either).
PAGELESS: frozenset[Mode] = frozenset({"oversized", "deep", "retry_after", "reset"})

RUNAWAY_NEXTID = "9999999999999-0"  # 2286-11-20
FUTURE_MS = 36_525 * 86_400 * 1000  # 100 years of 365.25 days
DEFAULT_SIZE = 64 * 1024 * 1024
DEFAULT_DEPTH = 100_000
CHUNK = 64 * 1024

_HEAD = b'{"results":['
_DEEP_HEAD_DEPTH = 4  # the page object, results, the item, its data
_MIN_SIZE = len(_HEAD) + len(b'],"nextid":"1714555800000-1","moreresults":true}')


class Fault(msgspec.Struct):
    """A scripted answer: ``status`` with Ticketmatic's error JSON, or ``body`` as given.

    ``retry_after``: a number of seconds, or any text, sent as the Retry-After header.
    """

    status: int
    retry_after: float | str | None = None
    body: bytes | None = None


class Misbehaviour(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One answer of a fault mode (see :data:`Mode`) and its parameters."""

    mode: Mode
    size: int = DEFAULT_SIZE  # oversized: bytes of the body
    content_length: bool = True  # oversized: send a Content-Length (else chunked)
    depth: int = DEFAULT_DEPTH  # deep: nesting of the whole body
    chunk: int = 1  # drip: bytes per write
    interval: float = 1.0  # drip: seconds between writes
    value: str | None = None  # retry_after: the header's text

    def __post_init__(self) -> None:
        if self.size < _MIN_SIZE:
            raise ValueError(f"size: at least {_MIN_SIZE}")
        if self.depth <= _DEEP_HEAD_DEPTH:
            raise ValueError(f"depth: more than {_DEEP_HEAD_DEPTH}")
        if self.chunk < 1 or self.interval < 0:
            raise ValueError("chunk: at least 1; interval: not negative")
        if self.mode == "retry_after" and self.value is None:
            raise ValueError("retry_after: needs value, the Retry-After text")
        header_safe(self.value or "")


def misbehaviour(mode: str, params: Mapping[str, object]) -> Misbehaviour:
    """A :class:`Misbehaviour` from Python values or their text (a query, the CLI).

    ValueError naming the problem: an unknown mode, a parameter the mode does not take,
    or a value that does not fit.
    """
    extra = sorted(set(params) - PARAMS[check_mode(mode)])
    if extra:
        raise ValueError(f"{mode} takes no {', '.join(extra)}")
    try:
        return msgspec.convert({"mode": mode, **params}, Misbehaviour, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is none of {', '.join(MODES)}")
    return mode


def parse_spec(text: str) -> tuple[Mode, int]:
    """``MODE[:COUNT]`` (count 1 by default) as the CLI takes it; ValueError otherwise."""
    mode, _, count = text.partition(":")
    if count and (not count.isdigit() or int(count) < 1):
        raise ValueError(f"count: {count!r} is not a whole number of at least 1")
    return check_mode(mode), int(count or 1)


def header_safe(text: str) -> str:
    """``text`` if it can be sent as a header value as it is; ValueError if not."""
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
        raise ValueError("value: no control characters in a header")
    return text


class Outage(msgspec.Struct, frozen=True):
    """Until ``until`` (the simulator's clock, seconds), every request of the account is
    answered ``status`` with Ticketmatic's error JSON, or dropped if ``status`` is None."""

    until: float
    status: int | None = 503


Scripted = Fault | Misbehaviour


class Script:
    """The answers queued for one account's next requests, in order, each for a count of
    requests. Memory grows with the calls, not with their counts."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Scripted, int]] = deque()

    def add(self, answer: Scripted, count: int) -> None:
        if count < 1:
            raise ValueError("count: at least 1")
        self._queue.append((answer, count))

    def peek(self) -> Scripted | None:
        return self._queue[0][0] if self._queue else None

    def take(self) -> Scripted | None:
        """The next answer, used up."""
        if not self._queue:
            return None
        answer, count = self._queue.popleft()
        if count > 1:
            self._queue.appendleft((answer, count - 1))
        return answer

    def __len__(self) -> int:
        return sum(count for _, count in self._queue)


# --- the bodies too big to hold -----------------------------------------------------------


def _tail(nextid: str, *, more: bool) -> bytes:
    return b'],"nextid":"%s","moreresults":%s}' % (nextid.encode(), b"true" if more else b"false")


def _ts(ms: int) -> bytes:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()


def _item(ms: int, ref: bytes, ts: bytes | None = None) -> bytes:
    return (
        b'{"id":"%d-0","ts":"%s","type":"webshop:pageview","data":{"page":"basket",'
        b'"params":{},"orderid":"0","ref":"%s"}}' % (ms, ts or _ts(ms), ref)
    )


def oversized_chunks(size: int, first_ms: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of a page of pageviews ``<first_ms + n>-0`` (one ms apart:
    with 13-digit ms, until 2286, every item has the same length), padded with whitespace
    before the tail; its nextid is just after the last item and moreresults is true."""
    item_len = len(_item(first_ms, b"sim-oversized")) + 1  # with its comma
    fixed = len(_HEAD) + len(_tail(f"{first_ms}-1", more=True))
    count = max(0, (size - fixed + 1) // item_len)
    tail = _tail(f"{first_ms + max(0, count - 1)}-1", more=True)
    sent = 0
    buffer = bytearray(_HEAD)
    ts_second, ts = -1, b""
    for n in range(count):
        ms = first_ms + n
        if ms // 1000 != ts_second:  # strftime once a second of ids, not once an item
            ts_second, ts = ms // 1000, _ts(ms)
        if n:
            buffer += b","
        buffer += _item(ms, b"sim-oversized", ts)
        if len(buffer) >= CHUNK:
            sent += len(buffer)
            yield bytes(buffer)
            buffer.clear()
    pad = size - sent - len(buffer) - len(tail)
    while pad > 0:
        spaces = min(pad, CHUNK)
        buffer += b" " * spaces
        pad -= spaces
        yield bytes(buffer)
        buffer.clear()
    yield bytes(buffer + tail)


def deep_body(depth: int, ms: int) -> tuple[int, Iterator[bytes]]:
    """(length, chunks) of a page of one pageview ``<ms>-0`` whose ``data.nested`` holds
    arrays nested so that the whole body is ``depth`` deep; valid JSON otherwise."""
    arrays = depth - _DEEP_HEAD_DEPTH
    item = _item(ms, b"sim-deep")
    head = _HEAD + item[:-2] + b',"nested":'
    tail = b"}}" + _tail(f"{ms}-1", more=False)

    def chunks() -> Iterator[bytes]:
        yield head
        for bracket in (b"[", b"]"):
            left = arrays
            while left:
                n = min(left, CHUNK)
                yield bracket * n
                left -= n
        yield tail

    return len(head) + 2 * arrays + len(tail), chunks()
