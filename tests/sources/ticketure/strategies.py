"""Hypothesis strategies: valid audit records, and documents near them (valid or not)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import strategies as st

from streamproc.sources.ticketure.records import (
    GATEWAY_ACTIONS,
    TICKET_ACTIONS,
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)

TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
SCALAR = (
    st.none()
    | TEXT
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)
JSON = st.recursive(
    st.none() | st.booleans() | SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """RFC 3339 date-times with offsets, fractions and Z in their various spellings."""
    when = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    minutes = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    text = when.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(
        timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))
    )
    if minutes == 0 and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text


def attributes(struct: type[msgspec.Struct]) -> st.SearchStrategy[msgspec.Struct]:
    names = [f.name for f in msgspec.structs.fields(struct)]
    return st.fixed_dictionaries({}, optional=dict.fromkeys(names, SCALAR)).map(
        lambda d: struct(**d)
    )


def records() -> st.SearchStrategy[AuditRecord]:
    """Records the receiver accepts (every field, every action, any scalar attribute)."""
    common: dict[str, Any] = {
        "occurred_at": rfc3339(),
        "event_id": st.none() | st.text(min_size=1, max_size=256).filter(_no_surrogates),
        "email": st.none() | TEXT,
        "mobile_number": st.none() | TEXT,
    }
    tickets = st.builds(
        TicketAudit,
        action=st.sampled_from(TICKET_ACTIONS),
        attributes=attributes(TicketAttributes),
        **common,
    )
    payments = st.builds(
        GatewayAudit,
        action=st.sampled_from(GATEWAY_ACTIONS),
        attributes=attributes(GatewayAttributes),
        **common,
    )
    return tickets | payments


def _no_surrogates(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


BAD_VALUES = (
    st.booleans()
    | JSON
    | st.sampled_from(
        [
            "",
            "x" * 257,
            "2025-05-01T10:15:00",
            "2025-05-01 10:15:00Z",
            "2025-02-30T10:15:00Z",
            "2025-05-01T10:15:60Z",
            "purchase",
            "purchased",
            "gateway_audit",
            "ticket_audit",
        ]
    )
)
FIELDS = st.sampled_from(
    [
        "type",
        "action",
        "occurred_at",
        "event_id",
        "email",
        "mobile_number",
        "attributes",
        "unknown",
    ]
)
ATTRIBUTE_NAMES = st.sampled_from(
    [f.name for f in msgspec.structs.fields(TicketAttributes)]
    + [f.name for f in msgspec.structs.fields(GatewayAttributes)]
    + ["seat", ""]
)


@st.composite
def near_records(draw: st.DrawFn) -> Any:
    """A valid record as plain data with a few fields changed, dropped or added."""
    doc: dict[str, Any] = msgspec.to_builtins(draw(records()))
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["set", "drop", "attribute"]))
        name = draw(FIELDS)
        if what == "set":
            doc[name] = draw(BAD_VALUES)
        elif what == "drop":
            doc.pop(name, None)
        elif isinstance(doc.get("attributes"), dict):
            doc["attributes"][draw(ATTRIBUTE_NAMES)] = draw(BAD_VALUES | SCALAR)
    return doc


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (keys and indexes)."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += _paths(value, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` (plain data) with up to three values replaced, dropped or keys added."""
    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a deep copy
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            if draw(st.booleans()):
                doc = draw(JSON)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        what = draw(st.sampled_from(["set", "drop", "add"]))
        if what == "set":
            parent[path[-1]] = draw(BAD_VALUES)
        elif what == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(TEXT | FIELDS)] = draw(BAD_VALUES)
    return doc
