"""Push requests drawn by hypothesis: every route, bodies near valid ones or poisoned, and
credentials right or wrong.

A body starts as a valid document for its route (the records of
``tests/sources/ticketure/strategies.py``, as our shape or mParticle batches) and is then
kept, mutated, given attributes nobody documents, poisoned at one value (invalid UTF-8,
nesting past the decoder's depth, numbers out of range, lone surrogates), swapped for any
JSON or bytes, or padded past the body limit. Headers carry the right credentials of one
of the :data:`SENDERS` (basic, hmac, hmac with a replay window) or wrong, stale or no
ones, a good or bad content type, an idempotency key or not.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import msgspec
import orjson
from hypothesis import strategies as st

from streamproc.config import PushSender, Secret
from streamproc.formats.ticketure import AuditRecord
from streamproc.sim.credentials import basic, push_signature
from streamproc.sim.pushes import mparticle_batch
from tests.sources.ticketure.strategies import JSON, SCALAR, mutate, paths, records

ROUTES = ("/ticketure/events", "/v2/events", "/v2/bulkevents")
KEY, SECRET = "fuzz-key", "fuzz-secret"
HMAC_SECRET, WINDOW_SECRET = "fuzz-hmac", "fuzz-window"
WINDOW_S = 300.0
SENDERS = [
    PushSender(name="basic", auth="basic", key=KEY, secret=Secret(SECRET)),
    PushSender(name="hmac", auth="hmac", secret=Secret(HMAC_SECRET)),
    PushSender(name="window", auth="hmac", secret=Secret(WINDOW_SECRET), replay_window_s=WINDOW_S),
]
SIGNATURE, TIMESTAMP, IDEMPOTENCY = "X-Signature-SHA256", "X-Signature-Timestamp", "Idempotency-Key"
PLACEHOLDER = "\x00poison\x00"
POISONS = [
    b'"Jos\xe9"',  # invalid UTF-8
    b'"\xed\xa0\x80"',  # a surrogate in UTF-8
    b'"\\ud800"',  # a lone surrogate escape
    b"[" * 1200 + b"]" * 1200,  # past the decoder's depth
    b'{"a":' * 1100 + b"1" + b"}" * 1100,
    b"[" * 3000,  # deep and cut
    b"1e400",
    b"-1e400",
    b"18446744073709551616",
    b"9" * 5000,
    b"NaN",
    b'"' + b"x" * 5000 + b'"',
    b"true",
    b"null",
    b'{"nested": {"deeper": [1, 2]}}',
]


class Request(NamedTuple):
    route: str
    body: bytes
    headers: dict[str, str]
    sender: str | None  # the sender whose credentials these are, None if they are wrong


# Strategies are built once: building one per draw costs more than drawing from it.
_RECORD = records(attributes_at_most=5)
_RECORDS = _RECORD.map(lambda r: [r]) | st.lists(_RECORD, min_size=2, max_size=3)
_REQUEST_ID = st.none() | st.just("req-1")
_POISON = st.sampled_from(POISONS)
_NEW_NAMES = st.sampled_from(["seat_row", "loyalty_tier", "new_fee", "", "x" * 300]) | st.text(
    max_size=12
)
_NEW_VALUES = SCALAR | st.booleans() | JSON
_HEADER_TEXT = st.text(
    # What http.client can put on the wire: latin-1 without line breaks or NUL.
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
_BODY_KIND = st.sampled_from(
    ["valid"] * 3 + ["mutated"] * 2 + ["new"] * 2 + ["poison"] * 2 + ["json", "bytes", "large"]
)
_GOOD_TYPE = st.sampled_from([True] * 9 + [False])
_CONTENT_TYPE = st.sampled_from(["application/json", "application/json; charset=utf-8"])
_KEY = (
    st.none()
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
    | st.sampled_from(["x" * 257, "two words", "caf\u00e9"])
)
_EXTRA_HEADERS = st.lists(st.sampled_from(["X-Extra", "Accept", "User-Agent"]), max_size=2)
_HOW = st.sampled_from(["basic", "hmac", "window"] * 3 + ["stale", "wrong", "none", "junk"])
_JUNK_HEADER = st.sampled_from(["Authorization", SIGNATURE, TIMESTAMP])
_BINARY = st.binary(max_size=300)


def poison(draw: st.DrawFn, doc: Any) -> bytes:
    """``doc`` as JSON with one value (any, at any depth) replaced by a poison's bytes."""
    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a deep copy
    path = draw(st.sampled_from(paths(doc)))
    poison = draw(_POISON)
    if not path:
        return poison
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = PLACEHOLDER
    return orjson.dumps(doc).replace(orjson.dumps(PLACEHOLDER), poison, 1)


def add_attributes(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with attributes no one documents added where a record keeps attributes."""
    doc = msgspec.json.decode(msgspec.json.encode(doc))
    for holder in _attribute_holders(doc):
        for _ in range(draw(st.integers(1, 4))):
            holder[draw(_NEW_NAMES)] = draw(_NEW_VALUES)
    return doc


def _attribute_holders(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return [h for item in doc for h in _attribute_holders(item)]
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("attributes"), dict):
        return [doc["attributes"]]
    holders = []
    for event in doc.get("events") or []:
        data = event.get("data") if isinstance(event, dict) else None
        if isinstance(data, dict):
            holders.append(data.setdefault("custom_attributes", {}))
    return holders


def document(draw: st.DrawFn, route: str, batch: list[AuditRecord]) -> Any:
    """``batch`` as a valid document for ``route`` (twins now and then)."""
    if draw(st.integers(0, 9)) == 0:
        batch = [batch[0]] * 2  # identical records in one request
    if draw(st.booleans()):
        batch = [msgspec.structs.replace(r, event_id=None) for r in batch]
    if route == "/ticketure/events":
        plain = [msgspec.to_builtins(r) for r in batch]
        return plain[0] if len(plain) == 1 and draw(st.booleans()) else plain
    batches = [mparticle_batch(r, source_request_id=draw(_REQUEST_ID)) for r in batch]
    if route == "/v2/events":
        merged = batches[0]
        for extra in batches[1:]:
            merged["events"] += extra["events"]
        return merged
    return batches


def request(draw: st.DrawFn, batch: list[AuditRecord], max_body: int) -> Request:
    """A route, a body made of ``batch`` for it (or not at all), and headers good or not."""
    route = draw(st.sampled_from(ROUTES))
    doc = document(draw, route, batch)
    choice = draw(_BODY_KIND)
    if choice == "valid":
        body = orjson.dumps(doc)
    elif choice == "mutated":
        body = orjson.dumps(mutate(draw, doc))
    elif choice == "new":
        body = orjson.dumps(add_attributes(draw, doc))
    elif choice == "poison":
        body = poison(draw, doc)
    elif choice == "json":
        body = orjson.dumps(draw(JSON))
    elif choice == "bytes":
        body = draw(_BINARY)
    else:
        body = orjson.dumps(doc) + b" " * (max_body + 1)
    headers, sender = credentials(draw, body)
    if draw(_GOOD_TYPE):
        headers["Content-Type"] = draw(_CONTENT_TYPE)
    else:
        headers["Content-Type"] = draw(st.just("text/plain") | _HEADER_TEXT)
    key = draw(_KEY)
    if key is not None:
        headers[IDEMPOTENCY] = key
    for name in draw(_EXTRA_HEADERS):
        headers[name] = draw(_HEADER_TEXT)
    return Request(route, body, headers, sender)


@st.composite
def requests(draw: st.DrawFn, max_body: int = 16 * 1024) -> Request:
    """One request (see :func:`request`) of freshly drawn records."""
    return request(draw, draw(_RECORDS), max_body)


@st.composite
def request_batches(draw: st.DrawFn, size: int, max_body: int = 16 * 1024) -> list[Request]:
    """``size`` requests made of the same drawn records, each with its own route, body
    kind, poison and headers: drawing the records costs most of a request, so a long run
    shares them among a few requests."""
    batch = draw(_RECORDS)
    return [request(draw, batch, max_body) for _ in range(size)]


def credentials(draw: st.DrawFn, body: bytes) -> tuple[dict[str, str], str | None]:
    """Headers for one way of authenticating, and the sender they name if they are right."""
    how = draw(_HOW)
    now = int(time.time())
    if how == "basic":
        return {"Authorization": basic(KEY, SECRET)}, "basic"
    if how == "hmac":
        return {SIGNATURE: push_signature(HMAC_SECRET, body)}, "hmac"
    if how == "window":
        return {SIGNATURE: push_signature(WINDOW_SECRET, body, now), TIMESTAMP: str(now)}, "window"
    if how == "stale":
        stamp = now - int(WINDOW_S) - 60
        return {SIGNATURE: push_signature(WINDOW_SECRET, body, stamp), TIMESTAMP: str(stamp)}, None
    if how == "wrong":
        return {"Authorization": basic(KEY, draw(_HEADER_TEXT))}, None
    if how == "none":
        return {}, None
    return {draw(_JUNK_HEADER): draw(_HEADER_TEXT)}, None
