"""schemas/ticketure/events.schema.json and the msgspec structs in records.py agree."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streamproc.errors import DecodeError
from streamproc.formats.ticketure import (
    ENCODER,
    GATEWAY_ACTIONS,
    TICKET_ACTIONS,
    AuditRecord,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)
from streamproc.schemas import load_schema
from streamproc.sources.ticketure import audit_shape
from tests.sources.ticketure.strategies import near_records, records


def names(struct: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct)}


def test_field_sets_and_enums_are_equal() -> None:
    """Each kind's properties, actions and attribute names are exactly the structs' fields."""
    defs = load_schema("ticketure/events.schema.json")["$defs"]
    for kind, struct, attrs, actions in (
        ("ticket_audit", TicketAudit, TicketAttributes, TICKET_ACTIONS),
        ("gateway_audit", GatewayAudit, GatewayAttributes, GATEWAY_ACTIONS),
    ):
        schema = defs[kind]
        # unknown_attributes is the receiver's to set on Kafka, never sent: not in the schema.
        assert set(schema["properties"]) == names(struct) - {"unknown_attributes"} | {"type"}
        assert schema["properties"]["type"] == {"const": kind}
        assert tuple(schema["properties"]["action"]["enum"]) == actions
        required = {f.encode_name for f in msgspec.structs.fields(struct) if f.required}
        assert set(schema["required"]) == required | {"type"}
        assert schema["additionalProperties"] is False
        attributes = defs[f"{kind.split('_')[0]}_attributes"]
        assert set(attributes["properties"]) == names(attrs)
        assert attributes["additionalProperties"] == {"$ref": "#/$defs/any_scalar"}


def test_every_documented_attribute_is_in_the_schema(shared_reference: Any) -> None:
    """The schema has every attribute of ../shared/reference/ticketure/audit-events.json."""
    documented = orjson.loads((shared_reference / "ticketure/audit-events.json").read_bytes())
    defs = load_schema("ticketure/events.schema.json")["$defs"]
    assert set(documented["ticket_audit"]["attributes"]) == set(
        defs["ticket_attributes"]["properties"]
    )
    assert set(documented["gateway_audit"]["attributes"]) == set(
        defs["gateway_attributes"]["properties"]
    )
    assert {a.lower() for a in documented["ticket_audit"]["actions"]} == set(TICKET_ACTIONS)
    for identity in documented["user_identities"]:
        assert identity in defs["ticket_audit"]["properties"]


def accepted(body: bytes) -> bool:
    try:
        audit_shape.decode(body)
    except DecodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(record=records(), batched=st.booleans())
def test_generated_records_are_valid_under_both(
    events_schema: Draft202012Validator, record: AuditRecord, batched: bool
) -> None:
    """Any record the structs can hold (with a valid time) passes the schema and the receiver."""
    body = ENCODER.encode([record] if batched else record)
    events_schema.validate(orjson.loads(body))
    (decoded,) = audit_shape.decode(body).accepted
    assert msgspec.structs.replace(decoded.record, event_id=record.event_id) == record


@settings(max_examples=600, deadline=None)
@given(doc=near_records() | st.lists(near_records(), max_size=3))
def test_schema_and_receiver_agree_on_what_is_valid(
    events_schema: Draft202012Validator, doc: Any
) -> None:
    """For documents near a valid record, the schema accepts exactly what the receiver does."""
    assert events_schema.is_valid(doc) == accepted(orjson.dumps(doc))
