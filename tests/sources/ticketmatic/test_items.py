"""Item ids, decoding of the reference items, and the schema against the structs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.errors import DecodeError
from streamproc.formats import ticketmatic as items
from streamproc.formats.ticketmatic import later, position_key
from streamproc.schemas import load_schema
from streamproc.sources.ticketmatic.client import decode_page

ITEM_SCHEMA = "ticketmatic/eventstream-item.schema.json"
PAGE_SCHEMA = "ticketmatic/eventstream-page.schema.json"


def reference_items(ref: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = orjson.loads(
        (ref / "ticketmatic" / "eventstream-items.json").read_bytes()
    )
    return data


def test_ids_order_by_ms_then_seq_not_as_strings() -> None:
    """`999-0` < `1000-0` and `5-9` < `5-10`, although string order says otherwise."""
    ids = ["1526985054069-10", "999-0", "1526985054069-9", "1000-0", "1526985054069-0"]
    assert sorted(ids, key=position_key) == [
        "999-0",
        "1000-0",
        "1526985054069-0",
        "1526985054069-9",
        "1526985054069-10",
    ]
    assert sorted(ids) != sorted(ids, key=position_key)
    assert later("1526985054069-9", "1526985054069-10") == "1526985054069-10"
    assert later(None, "5-1") == "5-1"
    assert later("not-an-id", "5-1") == "5-1"


@given(st.lists(st.tuples(st.integers(0, 10**13), st.integers(0, 10**6)), max_size=30))
def test_id_order_is_the_pair_order(pairs: list[tuple[int, int]]) -> None:
    """Sorting ids by position_key sorts them exactly as their (ms, seq) pairs."""
    ids = [f"{ms}-{seq}" for ms, seq in pairs]
    assert [position_key(i) for i in sorted(ids, key=position_key)] == sorted(pairs)
    assert all(items.parse_item_id(i) == p for i, p in zip(ids, pairs, strict=True))


def test_nextid_forms() -> None:
    """`0` (an empty stream's nextid) and a bare number parse; other text does not."""
    assert position_key("0") == (0, 0)
    assert position_key("1526985054069") == (1526985054069, 0)
    for bad in ("", "abc", "1-2-3", "-1", "1.5"):
        with pytest.raises(ValueError, match="not an eventstream id"):
            position_key(bad)


def test_every_reference_item_decodes(shared_reference: Path) -> None:
    """Each of the ten documented items decodes, with its id, time, type and ref."""
    examples = reference_items(shared_reference)
    assert len(examples) == 10
    for example in examples:
        item = items.decode_item(orjson.dumps(example))
        assert item.id == example["id"]
        assert items.normalize_type(item.type) == example["type"]
        assert item.data.ref == example["data"]["ref"]
        assert items.ts_ms(item.ts) > 1_600_000_000_000
    confirm = next(e for e in examples if e["type"] == "webshop:checkout_confirm")
    order = items.decode_item(orjson.dumps(confirm)).data.order
    assert order is not None
    assert order.totalamount == "40"
    assert [t.price for t in order.tickets] == ["20", "20"]


def test_every_reference_item_fits_the_schema(shared_reference: Path) -> None:
    """The item schema accepts all ten documented items, and a page of them."""
    item_validator = jsonschema.Draft7Validator(load_schema(ITEM_SCHEMA))
    for example in reference_items(shared_reference):
        item_validator.validate(example)
    page = {"results": reference_items(shared_reference), "nextid": "0", "moreresults": False}
    jsonschema.Draft7Validator(load_schema(PAGE_SCHEMA)).validate(page)
    decoded = decode_page(orjson.dumps(page))
    assert decoded.results is not None
    assert len(decoded.results) == 10


def test_schema_and_structs_name_the_same_fields() -> None:
    """Each struct's fields are exactly the properties of its schema definition."""
    item = load_schema(ITEM_SCHEMA)
    page = load_schema(PAGE_SCHEMA)
    defs = item["definitions"]
    pairs: list[tuple[type[msgspec.Struct], dict[str, Any]]] = [
        (items.TmItem, item),
        (items.TmData, defs["data"]),
        (items.TmOrder, defs["order"]),
        (items.TmTicket, defs["ticket"]),
        (items.TmProduct, defs["product"]),
        (items.EventstreamPage, page),
    ]
    for struct, node in pairs:
        assert set(struct.__struct_fields__) == set(node["properties"]), struct.__name__
    required = {f.name for f in msgspec.structs.fields(items.TmItem) if f.required}
    assert required == set(item["required"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"<html>busy</html>", "page"),
        (b'{"nextid": "0", "moreresults": false}', "page"),
        (b'{"results": {}, "nextid": "0", "moreresults": false}', "results"),
        (b'{"results": [], "nextid": 5, "moreresults": false}', "nextid"),
        (b'{"results": [], "nextid": "0", "moreresults": "no"}', "moreresults"),
    ],
)
def test_malformed_pages_are_decode_errors(body: bytes, field: str) -> None:
    """Not JSON, missing keys and wrong types are DecodeErrors naming the field."""
    with pytest.raises(DecodeError) as caught:
        decode_page(body)
    assert caught.value.field == field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            orjson.loads(body) if body.startswith(b"{") else body.decode(), load_schema(PAGE_SCHEMA)
        )


@pytest.mark.parametrize("nextid", ["garbage", "", "12-x"])
def test_a_nextid_that_is_no_position_is_a_decode_error(nextid: str) -> None:
    """The cursor moves to nextid: one that does not parse would stall the poller silently."""
    body = orjson.dumps({"results": [], "nextid": nextid, "moreresults": True})
    with pytest.raises(DecodeError) as caught:
        decode_page(body)
    assert caught.value.field == "nextid"
