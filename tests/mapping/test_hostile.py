"""Hostile input to the pure mapping: deep nesting, bad UTF-8, long numbers, blank types.

Each gives an outcome with its reason (or a content-hash id), never an exception.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from streamproc.mapping.common import ItemError, scalar_pairs
from streamproc.mapping.identity import item_id_of
from streamproc.mapping.router import MapOutcome, Mapped, MappingContext, Unmappable, map_record
from tests.mapping.helpers import CTX
from tests.mapping.hostile import in_data, nested, tm_item, with_raw

FORWARD = MappingContext(forward_unknown=True, currencies={"acme": "EUR"})
AUDIT = {"type": "scan_audit", "action": "x", "occurred_at": "2024-05-01T10:00:00Z"}


def unmappable(outcome: MapOutcome) -> Unmappable:
    assert isinstance(outcome, Unmappable), outcome
    return outcome


@pytest.mark.parametrize("source", ["ticketmatic", "ticketure"])
@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
def test_deep_nesting_anywhere_is_undecodable(source: str, depth: int) -> None:
    """Nesting in a field, as the whole body, as objects: undecodable, too deep for an id."""
    bodies = [
        with_raw(tm_item(), "extra", nested(depth)),
        in_data(tm_item(), nested(depth)),
        nested(depth),
        b'{"a":' * depth + b"1" + b"}" * depth,
    ]
    for body in bodies:
        for ctx in (CTX, FORWARD):
            outcome = unmappable(map_record(source, body, "x", "acme", ctx))
            assert outcome.reason_code == "undecodable", body[:20]
        assert item_id_of(source, body, None).startswith("sha256:")


def test_nesting_too_deep_says_so() -> None:
    """The reason of a 1,000-deep item names the depth limit."""
    outcome = unmappable(map_record("ticketmatic", in_data(tm_item(), nested(1000)), "x", "a", CTX))
    assert outcome.reason == "item: JSON nested deeper than the decoder's depth limit"


@pytest.mark.parametrize(
    ("source", "doc"),
    [
        ("ticketmatic", tm_item()),
        ("ticketure", {**AUDIT, "type": "ticket_audit", "action": "redeemed", "email": "v"}),
    ],
)
def test_invalid_utf8_is_undecodable(source: str, doc: dict[str, Any]) -> None:
    """A field read that is not UTF-8 is not JSON, for both sources.

    (msgspec skips unknown fields without reading them: bad bytes there harm nothing.)
    """
    value = orjson.dumps(doc).replace(b'"v"', b'"\xff\xfe"')
    outcome = unmappable(map_record(source, value, "x", "acme", FORWARD))
    assert outcome.reason_code == "undecodable"
    assert "not JSON: Invalid UTF-8" in outcome.reason


@pytest.mark.parametrize("source", ["ticketmatic", "ticketure"])
@pytest.mark.parametrize("number", [b"7" * 5000, b"-" + b"1" * 400, b"1" * 301 + b".5"])
def test_numbers_of_hundreds_of_digits_give_an_outcome(source: str, number: bytes) -> None:
    """A number too long for float() or for msgspec, read or skipped: an outcome and an id."""
    for doc, field in ((tm_item(), "id"), (tm_item(), "extra"), (AUDIT, "occurred_at")):
        value = with_raw(doc, field, number)
        assert isinstance(map_record(source, value, "x", "acme", FORWARD), Mapped | Unmappable)
        assert item_id_of(source, value, None)
    wrong_id = with_raw(tm_item(), "id", number)
    outcome = unmappable(map_record("ticketmatic", wrong_id, "x", "acme", CTX))
    assert outcome.reason_code == "undecodable"
    assert outcome.reason.startswith("id: ")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"occurred_at": "__raw__"}, "occurred_at"),
        ({"occurred_at": "", "attributes": {"ticketure_occured_at": "__raw__"}}, "attributes."),
    ],
)
def test_a_time_of_hundreds_of_digits_is_a_bad_field(fields: dict[str, Any], field: str) -> None:
    """A forwarded record's time of 400 digits is no time, naming the field (float() of it
    raised OverflowError)."""
    value = orjson.dumps({**AUDIT, **fields}).replace(b'"__raw__"', b"9" * 400)
    outcome = unmappable(map_record("ticketure", value, "x", None, FORWARD))
    assert outcome.reason_code == "bad_field"
    assert outcome.reason.startswith(field)
    assert outcome.reason.endswith("' is not a time after 1970")


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize(
    ("source", "doc"),
    [
        ("ticketmatic", tm_item(type="\t\n")),
        ("ticketmatic", tm_item(type=" ")),
        ("ticketure", {**AUDIT, "type": " ", "action": ""}),
        ("ticketure", {**AUDIT, "type": "\n"}),
    ],
)
def test_blank_types_are_dead_lettered(source: str, doc: dict[str, Any], forward: bool) -> None:
    """A type that is only whitespace is undecodable (label empty), forwarded or not."""
    ctx = FORWARD if forward else CTX
    outcome = unmappable(map_record(source, orjson.dumps(doc), "x", "acme", ctx))
    assert (outcome.item_type, outcome.reason_code) == ("empty", "undecodable")
    assert outcome.reason == "type: empty or only whitespace"


def test_forwarded_ticketure_names_are_trimmed() -> None:
    """An unknown action of whitespace and a padded type: the event is named by the type."""
    doc = {**AUDIT, "type": " scan_audit ", "action": " \t"}
    outcome = map_record("ticketure", orjson.dumps(doc), "x", None, FORWARD)
    assert isinstance(outcome, Mapped), outcome
    assert orjson.loads(outcome.batch)["events"][0]["data"]["event_name"] == "scan_audit"


@pytest.mark.parametrize("source", ["ticketmatic", "ticketure"])
def test_forwarded_numbers_beyond_a_float_are_dropped_and_counted(source: str) -> None:
    """With forward_unknown, 1e400 in an unknown item is left out (invalid_value), the rest
    forwarded; before, msgspec's DecodeError escaped the mapping."""
    if source == "ticketmatic":
        value = orjson.dumps(tm_item(type="webshop:teleport")).replace(
            b'"data":{', b'"data":{"far":1e400,"near":2.5,'
        )
    else:
        value = orjson.dumps(AUDIT).replace(b"}", b',"attributes":{"far":1e400,"near":2.5}}')
    outcome = map_record(source, value, "x", "acme", FORWARD)
    assert isinstance(outcome, Mapped), outcome
    attributes = orjson.loads(outcome.batch)["events"][0]["data"]["custom_attributes"]
    assert attributes["near"] == 2.5
    assert "far" not in attributes
    assert outcome.truncations == {"invalid_value": 1}


def test_forwarded_nesting_the_encoder_cannot_follow_is_an_item_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A nested value that hits the encoder's depth limit (decoded from a shallower stack
    than it is encoded from) is an ItemError naming the field, not a RecursionError."""

    def too_deep(value: object) -> bytes:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(msgspec.json, "encode", too_deep)
    with pytest.raises(ItemError) as caught:
        scalar_pairs({"flat": 1, "deep": [[1]]})
    assert (caught.value.field, caught.value.code) == ("deep", "undecodable")
