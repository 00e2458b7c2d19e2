"""Builders of hostile source records: deep nesting, raw bytes spliced into valid items."""

from __future__ import annotations

from typing import Any

import orjson


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """JSON ``depth`` arrays deep, built without recursion."""
    return b"[" * depth + leaf + b"]" * depth


def tm_item(**fields: Any) -> dict[str, Any]:
    """A mappable Ticketmatic ``webshop:add_tickets`` item, ``fields`` replaced."""
    item = {
        "id": "1714557600000-0",
        "ts": "2024-05-01T10:00:00+0000",
        "type": "webshop:add_tickets",
        "data": {"ref": "v", "tickets": [{"tickettypepriceid": 580, "price": "20"}]},
    }
    item.update(fields)
    return item


def with_raw(doc: dict[str, Any], field: str, raw: bytes) -> bytes:
    """``doc``'s JSON with top-level ``field`` set to the bytes ``raw``, valid JSON or not."""
    return orjson.dumps({**doc, field: "__raw__"}).replace(b'"__raw__"', raw)


def in_data(doc: dict[str, Any], raw: bytes) -> bytes:
    """``doc``'s JSON with ``raw`` as the value of an extra field ``x`` of its ``data``."""
    return orjson.dumps(doc).replace(b'"data":{', b'"data":{"x":' + raw + b",", 1)
