"""One simulated account's eventstream: its items, pages, retention and who may read it.

Pure data structures for :mod:`streamproc.sim.ticketmatic` (no HTTP here): items are kept
in id order with their JSON encoded once, pages are cut by bisection on ``(ms, seq)``,
and the oldest items are dropped past the retention. :func:`misshapen_page` reshapes a
page for the fault modes that keep its parts (see :mod:`streamproc.sim.faults`).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import orjson

from streamproc.errors import DecodeError
from streamproc.formats.ticketmatic import normalize_type, parse_ts, position_key
from streamproc.sim.credentials import TM_MAX_AGE_S, tm_sign, tm_signed_at, tm_signed_fields
from streamproc.sim.faults import FUTURE_MS, RUNAWAY_NEXTID, Mode, Outage, Script
from streamproc.sim.webshop import WebshopSessions

NextId = Literal["last", "after"]


class SimAccount(msgspec.Struct, frozen=True):
    name: str
    access_key: str
    secret_key: str

    @classmethod
    def parse(cls, text: str) -> SimAccount:
        """``name:accesskey:secretkey``."""
        parts = text.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"account {text.split(':')[0]!r}: expected name:accesskey:secretkey")
        return cls(*parts)


class StreamItem(msgspec.Struct, frozen=True, array_like=True):
    key: tuple[int, int]
    id: str
    type: str  # normalized, for the eventtypes filter
    raw: bytes


class Stream:
    """One account's items in id order; the oldest are dropped past the retention."""

    def __init__(self, account: SimAccount, sessions: WebshopSessions) -> None:
        self.account = account
        self.sessions = sessions
        self.keys: list[tuple[int, int]] = []
        self.items: list[StreamItem] = []
        self.first = 0  # items before this index are dropped
        self.last_key = (0, 0)
        self.script = Script()  # answers queued for the next requests
        self.outage: Outage | None = None
        self.stats: Counter[str] = Counter()

    def next_key(self, ms: int) -> tuple[int, int]:
        last_ms, last_seq = self.last_key
        key = (last_ms, last_seq + 1) if ms <= last_ms else (ms, 0)
        self.last_key = key
        return key

    def append(self, ms: int, item_type: str, data: dict[str, Any]) -> str:
        key = self.next_key(ms)
        item_id = f"{key[0]}-{key[1]}"
        raw = orjson.dumps({"id": item_id, "ts": _ts(key[0]), "type": item_type, "data": data})
        self._store(StreamItem(key, item_id, normalize_type(item_type), raw))
        return item_id

    def append_raw(self, ms: int, raw: bytes) -> str:
        """A raw (possibly broken) item at the next position; its own id is not checked."""
        key = self.next_key(ms)
        item_id = f"{key[0]}-{key[1]}"
        self._store(StreamItem(key, item_id, "", raw))
        return item_id

    def _store(self, item: StreamItem) -> None:
        self.keys.append(item.key)
        self.items.append(item)
        self.stats["generated"] += 1

    def drop_older(self, horizon_ms: int) -> None:
        start = bisect.bisect_left(self.keys, (horizon_ms, 0), lo=self.first)
        if start > self.first:
            self.stats["dropped"] += start - self.first
            self.first = start
        if self.first > 4096 and self.first * 2 > len(self.items):
            del self.keys[: self.first], self.items[: self.first]
            self.first = 0

    def page(
        self, start: tuple[int, int] | None, types: set[str], size: int, nextid: NextId
    ) -> tuple[list[StreamItem], str | None, bool]:
        """Up to ``size`` items from ``start``: (items, id of the last one looked at, more)."""
        i = self.first if start is None else bisect.bisect_left(self.keys, start, lo=self.first)
        end = len(self.items)
        out: list[StreamItem] = []
        scanned: StreamItem | None = None
        while i < end and len(out) < size:
            item = self.items[i]
            i += 1
            scanned = item
            if not types or item.type in types:
                out.append(item)
        if scanned is None:
            return out, None, False
        last = scanned.id if nextid == "last" else f"{scanned.key[0]}-{scanned.key[1] + 1}"
        return out, last, i < end

    def live(self) -> int:
        return len(self.items) - self.first


def check_authorization(
    header: str | None, account: str, by_key: dict[str, SimAccount], now_s: float
) -> tuple[int, str] | None:
    """None if ``header`` may read ``account``'s stream, else (status, message) to answer.

    Missing or malformed header, unknown key, wrong secret or signature, or a signature
    time more than 30 minutes off: 401. Valid credentials of another account: 403.
    """
    if not header:
        return 401, "Unauthorized: no Authorization header"
    if header.startswith("Basic "):
        try:
            plain = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return 401, "Unauthorized: malformed basic credentials"
        user, _, password = plain.partition(":")
        holder = by_key.get(user)
        if holder is None or not hmac.compare_digest(password, holder.secret_key):
            return 401, "Unauthorized: wrong access key or secret key"
    else:
        fields = tm_signed_fields(header)
        if fields is None:
            return 401, "Unauthorized: unknown authorization scheme"
        holder = by_key.get(fields["key"])
        if holder is None:
            return 401, "Unauthorized: unknown access key"
        signed_at = tm_signed_at(fields["ts"])
        if signed_at is None:
            return 401, "Unauthorized: ts is not YYYY-MM-DDTHH:MM:SS"
        if abs(now_s - signed_at.timestamp()) > TM_MAX_AGE_S:
            return 401, "Unauthorized: signature time is more than 30 minutes off"
        expected = tm_sign(holder.access_key, holder.secret_key, account, fields["ts"])
        if not hmac.compare_digest(expected, fields["sign"]):
            return 401, "Unauthorized: signature mismatch"
    if holder.name != account:
        return 403, f"Forbidden: no access to account {account}"
    return None


def parse_query(query: Mapping[str, str]) -> tuple[tuple[int, int] | None, set[str]]:
    """(where to start, the normalized types wanted) from ``id``/``ts`` and ``eventtypes``.

    ValueError naming the problem: ``id`` and ``ts`` together, or either unreadable.
    """
    if "id" in query and "ts" in query:
        raise ValueError("id and ts are mutually exclusive")
    start: tuple[int, int] | None = None
    try:
        if "id" in query:
            start = position_key(query["id"])
        elif "ts" in query:
            start = (int(parse_ts(query["ts"]).timestamp() * 1000), 0)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None
    types = {normalize_type(t) for t in query.get("eventtypes", "").split(",") if t.strip()}
    return start, types


def page_body(items: list[StreamItem], nextid: str, more: bool) -> bytes:
    """The answer's JSON, with each item's bytes as stored (encoded once, when added)."""
    return b"".join(
        (
            b'{"results":',
            b"[" + b",".join(i.raw for i in items) + b"]" if items else b"null",
            b',"nextid":',
            orjson.dumps(nextid),
            b',"moreresults":',
            b"true" if more else b"false",
            b"}",
        )
    )


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def misshapen_page(
    mode: Mode,
    items: list[StreamItem],
    nextid: str,
    more: bool,
    start: tuple[int, int] | None,
    now_ms: int,
) -> bytes:
    """The body of a page of ``items`` reshaped as fault ``mode`` has it.

    ``descending``: the same items, newest first. ``future_id``: the last item (or, on an
    empty page, a pageview of its own) with an id and ts 100 years after ``now_ms``, the
    nextid unchanged. ``runaway_nextid``: nextid is ``RUNAWAY_NEXTID``. ``skip_nextid``:
    moreresults true and nextid ``<now_ms>-0``, past the items not served yet. ``creep``: no
    items, moreresults true and a nextid one sequence number past ``start``. Any other
    mode: the page as it is (a drip sends it slowly).
    """
    if mode == "descending":
        return page_body(items[::-1], nextid, more)
    if mode == "future_id":
        return page_body([*items[:-1], _future(items[-1] if items else None, now_ms)], nextid, more)
    if mode == "runaway_nextid":
        return page_body(items, RUNAWAY_NEXTID, more)
    if mode == "skip_nextid":
        return page_body(items, f"{now_ms}-0", True)
    if mode == "creep":
        ms, seq = start or (0, 0)
        return orjson.dumps({"results": [], "nextid": f"{ms}-{seq + 1}", "moreresults": True})
    return page_body(items, nextid, more)


def _future(item: StreamItem | None, now_ms: int) -> StreamItem:
    ms = now_ms + FUTURE_MS
    try:
        decoded = orjson.loads(item.raw) if item is not None else None
    except orjson.JSONDecodeError:
        decoded = None
    if not isinstance(decoded, dict):  # a broken item: a pageview stands in for it
        decoded = {"type": "webshop:pageview", "data": {"ref": "sim-future"}}
    decoded |= {"id": f"{ms}-0", "ts": _ts(ms)}
    return StreamItem((ms, 0), decoded["id"], "", orjson.dumps(decoded))
