"""Helpers for the mapping tests: outcome checks and source record builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from streamproc.mapping.router import MapOutcome, Mapped, MappingContext, map_record

CheckBatch = Callable[[bytes], dict[str, Any]]

CTX = MappingContext(currencies={"acme": "EUR", "dollars": "USD"})


def mapped(outcome: MapOutcome) -> Mapped:
    """The outcome as Mapped, failing the test with the outcome otherwise."""
    assert isinstance(outcome, Mapped), outcome
    return outcome


def tm(item: dict[str, Any], account: str | None = "acme", ctx: MappingContext = CTX) -> MapOutcome:
    """Map a Ticketmatic item given as a dict."""
    return map_record("ticketmatic", orjson.dumps(item), str(item.get("id")), account, ctx)


def tu(record: dict[str, Any], item_id: str = "push-1", ctx: MappingContext = CTX) -> MapOutcome:
    """Map a Ticketure audit record given as a dict."""
    return map_record("ticketure", orjson.dumps(record), item_id, None, ctx)


def event(doc: dict[str, Any]) -> dict[str, Any]:
    """The one event of a decoded batch."""
    events = doc["events"]
    assert len(events) == 1
    result: dict[str, Any] = events[0]
    return result
