"""Hostile input to the pure mapping: deep nesting, bad UTF-8, huge numbers, blank types.

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
def test_numbers_of_hundreds_of_digits_are_undecodable(source: str, number: bytes) -> None:
    """A number too long for float() (or msgspec) is refused, with its size."""
    for value in (with_raw(tm_item(), "id", number), in_data(tm_item(), number)):
        outcome = unmappable(map_record(source, value, "x", "acme", FORWARD))
        assert outcome.reason_code == "undecodable"
        assert "digits at byte" in outcome.reason
    assert item_id_of(source, with_raw(tm_item(), "id", number), None)  # and no raise


def test_a_time_of_hundreds_of_digits_is_undecodable() -> None:
    """A forwarded record's occurred_at of 400 digits: refused, where float() raised."""
    value = with_raw(AUDIT, "occurred_at", b"9" * 400)
    outcome = unmappable(map_record("ticketure", value, "x", None, FORWARD))
    assert outcome.reason == "record: a number of 400 digits at byte 48, more than 300"


def test_digits_inside_strings_are_not_numbers() -> None:
    """A long run of digits in a string (escaped quotes around it) is text: the item maps."""
    item = tm_item()
    item["data"]["tickets"][0]["eventname"] = '\\"' + "9" * 5000 + '"'
    assert isinstance(map_record("ticketmatic", orjson.dumps(item), "x", "acme", CTX), Mapped)


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
