"""Hypothesis strategies: valid audit records, and documents near them (valid or not)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import strategies as st

from streamproc.formats.ticketure import (
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


_FIRST, _LAST = datetime(1, 1, 2), datetime(9999, 12, 30)
_SPAN_S = int((_LAST - _FIRST).total_seconds())


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """RFC 3339 date-times with offsets, fractions and Z in their various spellings.

    The time is drawn as seconds and microseconds, several times cheaper than
    ``st.datetimes`` and with the same ends (year 1 and 9999) among its first choices.
    """
    seconds, micros = draw(st.integers(0, _SPAN_S)), draw(st.integers(0, 999_999))
    when = _FIRST + timedelta(seconds=seconds, microseconds=micros)
    minutes = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    text = when.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(
        timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))
    )
    if minutes == 0 and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text


def attributes(
    struct: type[msgspec.Struct], at_most: int | None = None
) -> st.SearchStrategy[msgspec.Struct]:
    """Any subset of the struct's attributes (or at most ``at_most`` of them, far fewer
    draws: what the request generator takes to run 100,000 cases)."""
    names = [f.name for f in msgspec.structs.fields(struct)]
    chosen: st.SearchStrategy[dict[str, Any]]
    if at_most is None:
        chosen = st.fixed_dictionaries({}, optional=dict.fromkeys(names, SCALAR))
    else:
        chosen = st.dictionaries(st.sampled_from(names), SCALAR, max_size=at_most)
    return chosen.map(lambda d: struct(**d))


def records(attributes_at_most: int | None = None) -> st.SearchStrategy[AuditRecord]:
    """Records the receiver accepts (every field, every action, any scalar attribute)."""
    common: dict[str, Any] = {
        "occurred_at": rfc3339(),
        "event_id": st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=256),
        "email": st.none() | TEXT,
        "mobile_number": st.none() | TEXT,
    }
    tickets = st.builds(
        TicketAudit,
        action=st.sampled_from(TICKET_ACTIONS),
        attributes=attributes(TicketAttributes, attributes_at_most),
        **common,
    )
    payments = st.builds(
        GatewayAudit,
        action=st.sampled_from(GATEWAY_ACTIONS),
        attributes=attributes(GatewayAttributes, attributes_at_most),
        **common,
    )
    return tickets | payments


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


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (keys and indexes)."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += paths(value, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` (plain data) with up to three values replaced, dropped or keys added."""
    return mutate(draw, doc)


def mutate(draw: st.DrawFn, doc: Any) -> Any:
    """:func:`mutated` as a plain function of ``draw``: no strategy is built per call, which
    makes the request generator several times faster."""
    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a deep copy
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths(doc)))
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
