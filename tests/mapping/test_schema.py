"""schemas/mparticle/ and the msgspec structs of streamproc.formats.mparticle agree, and both
fit inside mParticle's published schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, ValidationError
from referencing import Registry, Resource

from streamproc.formats import mparticle as b
from streamproc.schemas import load_schema
from tests.mapping.helpers import CheckBatch

SCHEMA = load_schema("mparticle/batch.schema.json")
DEFS = SCHEMA["definitions"]

# struct -> its node in the schema (events: the struct's own node, its data one level down)
PAIRS: list[tuple[type[msgspec.Struct], dict[str, Any]]] = [
    (b.Batch, SCHEMA),
    (b.UserIdentities, DEFS["UserIdentities"]),
    (b.CustomEvent, DEFS["CustomEvent"]),
    (b.CustomEventData, DEFS["CustomEvent"]["properties"]["data"]),
    (b.CommerceEvent, DEFS["CommerceEvent"]),
    (b.CommerceEventData, DEFS["CommerceEvent"]["properties"]["data"]),
    (b.ScreenView, DEFS["ScreenViewEvent"]),
    (b.ScreenViewData, DEFS["ScreenViewEvent"]["properties"]["data"]),
    (b.ProductAction, DEFS["ProductAction"]),
    (b.Product, DEFS["Product"]),
]


@pytest.mark.parametrize(("struct", "node"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_struct_fields_are_schema_properties(
    struct: type[msgspec.Struct], node: dict[str, Any]
) -> None:
    """Each struct has exactly the schema's properties, and its required ones."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.encode_name for f in info.fields}
    required = {f.encode_name for f in info.fields if f.required}
    if info.tag_field is not None:
        fields.add(info.tag_field)
        required.add(info.tag_field)
        assert node["properties"][info.tag_field]["enum"] == [info.tag]
    assert fields == set(node["properties"])
    assert required == set(node.get("required", []))
    assert node["additionalProperties"] is False
    assert info.forbid_unknown_fields


def test_literals_match_schema_enums() -> None:
    """Actions, custom event types and environments are the schema's enums."""
    assert set(b.Action.__args__) == set(DEFS["ProductAction"]["properties"]["action"]["enum"])  # type: ignore[attr-defined]
    custom = DEFS["CustomEvent"]["properties"]["data"]["properties"]["custom_event_type"]
    assert set(b.CustomEventType.__args__) == set(custom["enum"])  # type: ignore[attr-defined]
    assert set(b.Environment.__args__) == set(SCHEMA["properties"]["environment"]["enum"])  # type: ignore[attr-defined]


def test_identities_are_mparticle_identity_types(shared_reference: Path) -> None:
    """Every identity key streamproc may fill is one mParticle's schema accepts."""
    mp = json.loads((shared_reference / "mparticle/mparticle-eventsapi-schema.json").read_text())
    assert set(mp["properties"]["user_identities"]["properties"]) >= b.IDENTITY_TYPES


# --- generated structs ------------------------------------------------------------------

uuids = st.uuids().map(str)
stamps = st.integers(0, 2**53)
names = st.text(min_size=1, max_size=b.MAX_NAME)
# Values at the 4096 limit are picked, not generated: generating them is slow.
texts = st.text(max_size=300) | st.sampled_from(["x" * b.MAX_VALUE, "é" * (b.MAX_VALUE - 1)])
non_empty = st.text(min_size=1, max_size=300)
# Floats and ints within 2**53 survive the JSON round trip exactly.
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
attr_names = st.text(max_size=b.MAX_NAME)
attributes = st.none() | st.dictionaries(
    attr_names, texts | numbers | st.booleans(), max_size=b.MAX_ATTRIBUTES
)
product_attributes = st.none() | st.dictionaries(attr_names, texts, max_size=b.MAX_ATTRIBUTES)

products = st.builds(
    b.Product,
    id=non_empty,
    name=non_empty,
    quantity=st.integers(1, 1000) | st.floats(min_value=0.001, max_value=1e6),
    category=st.none() | texts,
    variant=st.none() | texts,
    price=st.none() | numbers,
    custom_attributes=product_attributes,
)
product_actions = st.builds(
    b.ProductAction,
    action=st.sampled_from(b.Action.__args__),  # type: ignore[attr-defined]
    checkout_step=st.none() | st.integers(1, 5),
    checkout_options=st.none() | texts,
    transaction_id=st.none() | non_empty,
    total_amount=st.none() | numbers,
    products=st.none() | st.lists(products, max_size=4),
)
events = st.one_of(
    st.builds(
        b.CustomEvent,
        st.builds(
            b.CustomEventData,
            timestamp_unixtime_ms=stamps,
            source_message_id=uuids,
            event_name=names,
            custom_event_type=st.sampled_from(b.CustomEventType.__args__),  # type: ignore[attr-defined]
            custom_attributes=attributes,
        ),
    ),
    st.builds(
        b.CommerceEvent,
        st.builds(
            b.CommerceEventData,
            timestamp_unixtime_ms=stamps,
            source_message_id=uuids,
            currency_code=st.from_regex(r"\A[A-Z]{3}\Z"),
            product_action=product_actions,
            custom_attributes=attributes,
        ),
    ),
    st.builds(
        b.ScreenView,
        st.builds(
            b.ScreenViewData,
            timestamp_unixtime_ms=stamps,
            source_message_id=uuids,
            screen_name=names,
            custom_attributes=attributes,
        ),
    ),
)
identities = st.none() | st.dictionaries(
    st.sampled_from(sorted(b.IDENTITY_TYPES)), st.text(min_size=1, max_size=50), min_size=1
).map(lambda d: b.UserIdentities(**d))
batches = st.builds(
    b.Batch,
    environment=st.sampled_from(["development", "production"]),
    source_request_id=uuids,
    events=st.lists(events, min_size=1, max_size=3),
    user_identities=identities,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches)
def test_generated_structs_validate_and_round_trip(batch: b.Batch, check_batch: CheckBatch) -> None:
    """Any Batch struct within its constraints is valid for both schemas and decodes back."""
    raw = b.encode(batch)
    check_batch(raw)
    assert b.decode(raw) == batch


VALID: dict[str, Any] = {
    "environment": "production",
    "source_request_id": "5b0c4c1e-8f5e-5d0a-9a57-2f1f4b8d6c3e",
    "user_identities": {"customer_id": "u1"},
    "events": [
        {
            "event_type": "commerce_event",
            "data": {
                "timestamp_unixtime_ms": 1,
                "source_message_id": "5b0c4c1e-8f5e-5d0a-9a57-2f1f4b8d6c3e",
                "currency_code": "EUR",
                "product_action": {
                    "action": "purchase",
                    "products": [{"id": "1", "name": "n", "quantity": 1}],
                },
                "custom_attributes": {"a": "b"},
            },
        }
    ],
}


def _mutate(path: str, value: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(VALID))
    node: Any = doc
    *parents, last = path.split("/")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()
_DATA = "events/0/data"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("environment", "staging"),
        ("source_request_id", "not-a-uuid"),
        ("user_identities/facebook", "x"),
        ("user_identities/customer_id", ""),
        ("events", []),
        ("events/0/event_type", "custom_event"),
        (f"{_DATA}/timestamp_unixtime_ms", -1),
        (f"{_DATA}/timestamp_unixtime_ms", _DELETE),
        (f"{_DATA}/currency_code", "eur"),
        (f"{_DATA}/custom_attributes", {"k" * 257: "v"}),
        (f"{_DATA}/custom_attributes", {"k": "v" * 4097}),
        (f"{_DATA}/custom_attributes", {f"k{i}": "v" for i in range(101)}),
        (f"{_DATA}/custom_attributes", {"k": None}),
        (f"{_DATA}/custom_attributes", {"k": [1]}),
        (f"{_DATA}/surprise", 1),
        (f"{_DATA}/product_action/action", "click"),
        (f"{_DATA}/product_action/checkout_step", 6),
        (f"{_DATA}/product_action/total_amount", "40"),
        (f"{_DATA}/product_action/products/0/quantity", 0),
        (f"{_DATA}/product_action/products/0/quantity", _DELETE),
        (f"{_DATA}/product_action/products/0/id", ""),
        (f"{_DATA}/product_action/products/0/custom_attributes", {"k": 1}),
        (f"{_DATA}/product_action/products/0/brand", "b"),
    ],
)
def test_schema_and_structs_refuse_alike(path: str, value: Any) -> None:
    """A document the schema refuses, msgspec's decoder refuses too.

    (One known difference, harmless as nothing streamproc writes has a null: the decoder
    reads an explicit null in an optional field as absent; the schema refuses it.)
    """
    validator = Draft7Validator(SCHEMA, format_checker=Draft7Validator.FORMAT_CHECKER)
    validator.validate(VALID)
    b.decode(orjson.dumps(VALID))
    doc = _mutate(path, value)
    with pytest.raises(ValidationError):
        validator.validate(doc)
    with pytest.raises(msgspec.ValidationError):
        b.decode(orjson.dumps(doc))


def test_bulk_schema_takes_up_to_100_batches(shared_reference: Path) -> None:
    """bulk.schema.json: an array of 1..100 batches, each resolved to batch.schema.json;
    mParticle's bulk schema accepts the same array.
    """
    bulk = load_schema("mparticle/bulk.schema.json")
    own = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))
    validator = Draft7Validator(bulk, registry=own, format_checker=Draft7Validator.FORMAT_CHECKER)
    ref = shared_reference / "mparticle"
    mp_batch = json.loads((ref / "mparticle-eventsapi-schema.json").read_text())
    mp_bulk = json.loads((ref / "mparticle-eventsapi-bulk-schema.json").read_text())
    mp_registry = Registry().with_resource(mp_batch["$id"], Resource.from_contents(mp_batch))
    mp_validator = Draft7Validator(
        mp_bulk, registry=mp_registry, format_checker=Draft7Validator.FORMAT_CHECKER
    )
    validator.validate([VALID] * 100)
    mp_validator.validate([VALID] * 100)
    with pytest.raises(ValidationError):
        validator.validate([VALID] * 101)
    with pytest.raises(ValidationError):
        validator.validate([VALID, _mutate("environment", "staging")])
