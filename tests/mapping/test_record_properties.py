"""Property tests of the map stage's per-record path: whatever a record holds (any bytes,
any headers, deep nesting, bad UTF-8, huge numbers, mutated items), :func:`plan` gives a
plan whose outcome is a valid batch, Unknown or a dead letter with its reason, and never
raises.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.formats import envelope
from streamproc.mapping.identity import item_hash
from streamproc.mapping.record import MAX_KEY_BYTES, Plan, RawHeaders, plan
from streamproc.mapping.router import Mapped, MappingContext, Unmappable, map_record
from tests.mapping.helpers import CheckBatch
from tests.mapping.test_properties import (
    audit_records,
    check_outcome,
    contexts,
    good_audit_records,
    good_items,
    json_values,
    tm_items,
)
from tests.sources.ticketure.strategies import mutated, near_records, records

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Far beyond any recursion limit hypothesis sets while it runs a test (it raises Python's).
SURELY_TOO_DEEP = 10_000

sources = st.sampled_from(["ticketmatic", "ticketure"])
header_names = st.sampled_from(
    [
        envelope.H_SOURCE,
        envelope.H_ITEM_ID,
        envelope.H_ACCOUNT,
        envelope.H_ITEM_TIME,
        envelope.H_RECEIVED,
        "dlq_attempt",
        "other",
    ]
)
header_values = (
    st.none()
    | st.binary(max_size=24)
    | st.sampled_from([b"ticketmatic", b"ticketure", b"acme", b"dollars", b"1-0", b"17145576"])
)
headers = st.lists(st.tuples(header_names, header_values), max_size=6)

# Documents near what each source sends: valid ones, noisy ones, and valid ones mutated
# (values of the wrong type, fields dropped, unknown fields added).
documents = (
    good_items
    | tm_items
    | good_audit_records
    | audit_records
    | near_records()
    | good_items.flatmap(mutated)
    | records().map(msgspec.to_builtins).flatmap(mutated)
)


def paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (keys and indexes), without recursion."""
    found: list[tuple[Any, ...]] = []
    todo: list[tuple[tuple[Any, ...], Any]] = [((), doc)]
    while todo:
        path, value = todo.pop()
        found.append(path)
        if isinstance(value, dict):
            todo += [((*path, k), v) for k, v in value.items()]
        elif isinstance(value, list):
            todo += [((*path, i), v) for i, v in enumerate(value)]
    return found


@st.composite
def spliced(draw: st.DrawFn, raw: bytes) -> bytes:
    """A document's JSON with the value at one of its paths (or a new key) being ``raw``."""
    doc = msgspec.json.decode(msgspec.json.encode(draw(documents)))  # a deep copy
    path = draw(st.sampled_from(paths(doc)))
    marker = "\x00spliced\x00"
    if not path:
        if not isinstance(doc, dict) or draw(st.booleans()):
            return raw
        path = (draw(st.sampled_from(["extra", "data", "attributes", "id", "type"])),)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = marker
    return msgspec.json.encode(doc).replace(msgspec.json.encode(marker), raw, 1)


@st.composite
def deep(draw: st.DrawFn) -> tuple[int, bytes]:
    """JSON nested ``depth`` levels, built iteratively: arrays, objects or both in turn."""
    depth = draw(st.integers(1, 3000) | st.sampled_from([999, 1000, 1001, SURELY_TOO_DEEP, 60_000]))
    leaf = draw(st.sampled_from([b"1", b'"x"', b"null", b"{}", b"[]", b"1e400"]))
    shape = draw(st.sampled_from(["array", "object", "both"]))
    if shape == "array":
        return depth, b"[" * depth + leaf + b"]" * depth
    if shape == "object":
        return depth, b'{"a":' * depth + leaf + b"}" * depth
    half = (depth + 1) // 2
    return 2 * half, b'[{"k":' * half + leaf + b"}]" * half


@st.composite
def huge_numbers(draw: st.DrawFn) -> tuple[int, bytes]:
    """A JSON number of 16 to 4,400 digits (sign, fraction, exponent), and its digit count:
    up to what float() takes, what msgspec takes (4,300) and beyond."""
    digits = draw(st.integers(16, 4400) | st.sampled_from([308, 309, 4300, 4301]))
    first = draw(st.sampled_from(b"123456789"))
    number = bytes([first]) + b"7" * (digits - 1)
    sign = draw(st.sampled_from([b"", b"-"]))
    tail = draw(st.sampled_from([b"", b".5", b"e10", b"e-400", b"E+400"]))
    return digits, sign + number + tail


BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
]


@st.composite
def bad_utf8(draw: st.DrawFn) -> bytes:
    """A document's JSON with a byte sequence that is not UTF-8 put in or over it."""
    raw = msgspec.json.encode(draw(documents))
    at = draw(st.integers(0, len(raw)))
    cut = draw(st.integers(0, 2))
    return raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at + cut :]


def check_plan(result: Plan, ctx: MappingContext, check_batch: CheckBatch) -> None:
    """What every plan must satisfy, whatever the record."""
    assert result.source in ("ticketmatic", "ticketure")
    assert result.item_id
    outcome = result.outcome
    check_outcome(outcome, ctx, check_batch)
    names = [k for k, _ in result.headers]
    assert names.count(envelope.H_SOURCE) == names.count(envelope.H_ITEM_ID) == 1
    if isinstance(outcome, Mapped):
        key = outcome.key.encode()
        assert result.key == key or (len(key) > MAX_KEY_BYTES and len(result.key) == 71)
        assert result.dedupe == item_hash(result.source, result.item_id)
        assert names.count(envelope.H_ITEM_TIME) >= 1
        for event in msgspec.json.decode(outcome.batch)["events"]:
            if event["event_type"] == "custom_event":
                assert event["data"]["event_name"].strip(), event


def run(source: str, raw_headers: RawHeaders, value: bytes | None, ctx: MappingContext) -> Plan:
    return plan(source, raw_headers, value, functools.partial(map_record, ctx=ctx))


@PROPERTY
@given(
    source=sources,
    raw_headers=headers,
    value=st.none() | st.binary(max_size=300) | json_values.map(msgspec.json.encode),
    ctx=contexts,
)
def test_any_bytes_and_headers_give_a_plan(
    source: str,
    raw_headers: RawHeaders,
    value: bytes | None,
    ctx: MappingContext,
    check_batch: CheckBatch,
) -> None:
    """Arbitrary bytes (or none) under arbitrary headers: a plan, never an exception."""
    check_plan(run(source, raw_headers, value, ctx), ctx, check_batch)


# (JSON, whether it is surely past the decoder's depth limit.)
beyond_limits = deep().map(lambda d: (d[1], d[0] >= SURELY_TOO_DEEP)) | huge_numbers().map(
    lambda n: (n[1], False)
)


@PROPERTY
@given(source=sources, raw_headers=headers, hostile=beyond_limits, data=st.data(), ctx=contexts)
def test_deep_nesting_and_huge_numbers_give_a_plan(
    source: str,
    raw_headers: RawHeaders,
    hostile: tuple[bytes, bool],
    data: st.DataObject,
    ctx: MappingContext,
    check_batch: CheckBatch,
) -> None:
    """Nesting of any depth or a number of up to 4,400 digits, alone or anywhere in an
    item: a plan; past the depth limit, undecodable."""
    raw, too_deep = hostile
    result = run(source, raw_headers, data.draw(spliced(raw)), ctx)
    check_plan(result, ctx, check_batch)
    if too_deep:
        assert isinstance(result.outcome, Unmappable), result.outcome
        assert result.outcome.reason_code == "undecodable"


@PROPERTY
@given(source=sources, raw_headers=headers, value=bad_utf8(), ctx=contexts)
def test_invalid_utf8_gives_a_plan(
    source: str,
    raw_headers: RawHeaders,
    value: bytes,
    ctx: MappingContext,
    check_batch: CheckBatch,
) -> None:
    """Items with bytes that are not UTF-8 anywhere in them: a plan, never an exception."""
    check_plan(run(source, raw_headers, value, ctx), ctx, check_batch)


@PROPERTY
@given(source=sources, raw_headers=headers, doc=documents, ctx=contexts)
def test_mutated_items_of_both_sources_give_a_plan(
    source: str,
    raw_headers: RawHeaders,
    doc: Any,
    ctx: MappingContext,
    check_batch: CheckBatch,
) -> None:
    """Valid items of either source, mutated (wrong types, dropped and unknown fields),
    read as either source: a plan, never an exception."""
    check_plan(run(source, raw_headers, msgspec.json.encode(doc), ctx), ctx, check_batch)
