"""The map stage's per-record path: any record gives a plan; a bug gives an internal_error."""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from streamproc.formats import envelope
from streamproc.mapper.transaction import INTERNAL_ERROR, Part, safe_plan
from streamproc.mapping.record import MAX_KEY_BYTES, RawHeaders, plan
from streamproc.mapping.router import MapOutcome, Mapped, Unmappable, map_record
from tests.mapping.helpers import CTX
from tests.mapping.hostile import in_data, nested, tm_item

MAP = functools.partial(map_record, ctx=CTX)
TM_HEADERS: RawHeaders = [(envelope.H_SOURCE, b"ticketmatic"), (envelope.H_ACCOUNT, b"acme")]
TOPIC = "t.ticketmatic.eventstream"


def unmappable(outcome: MapOutcome) -> Unmappable:
    assert isinstance(outcome, Unmappable), outcome
    return outcome


def test_a_thousand_levels_deep_without_an_id_header_is_undecodable() -> None:
    """The fuzz review's record (1,000 levels, no item id header): a content-hash id and
    an undecodable outcome, where item_id_of raised RecursionError before."""
    result = plan("ticketmatic", TM_HEADERS, in_data(tm_item(), nested(1000)), MAP)
    outcome = unmappable(result.outcome)
    assert outcome.reason == "item: JSON nested deeper than the decoder's depth limit"
    assert result.item_id.startswith("acme/sha256:")


def test_invalid_utf8_keeps_the_header_id() -> None:
    """A value that is not UTF-8 is undecodable; its id is still the header's."""
    value = orjson.dumps(tm_item()).replace(b'"v"', b'"\xff\xfe"')
    result = plan("ticketmatic", [*TM_HEADERS, (envelope.H_ITEM_ID, b"1-0")], value, MAP)
    outcome = unmappable(result.outcome)
    assert outcome.reason == "item: not JSON: Invalid UTF-8 encoded string"
    assert result.item_id == "acme/1-0"


def test_headers_without_values_or_utf8_are_read() -> None:
    """Null header values count as absent; bad UTF-8 is replaced; the batch keeps the rest."""
    headers: RawHeaders = [
        (envelope.H_SOURCE, None),
        (envelope.H_ITEM_ID, b"1-\xff"),
        (envelope.H_ACCOUNT, b"acme"),
        (envelope.H_RECEIVED, None),
        ("other", b"x"),
    ]
    result = plan("ticketmatic", headers, orjson.dumps(tm_item()), MAP)
    assert isinstance(result.outcome, Mapped)
    assert result.item_id == "acme/1-\ufffd"
    assert [k for k, _ in result.headers] == [
        envelope.H_ACCOUNT,
        envelope.H_SOURCE,
        envelope.H_ITEM_ID,
        envelope.H_ITEM_TIME,
    ]
    assert dict(result.headers)[envelope.H_ITEM_ID] == "1-\ufffd".encode()
    assert result.key == b"acme:v"


def test_an_output_key_too_long_is_its_hash() -> None:
    """A 300 KB order id as the key: a short hash instead, the same for the order's records,
    and the batch stays small (the id cut in it)."""
    doc = {
        "type": "ticket_audit",
        "action": "redeemed",
        "occurred_at": "2024-05-01T10:00:00Z",
        "attributes": {"ticket_order_id": "o" * 300_000},
    }
    keys = set()
    for event_id in ("e1", "e2"):
        result = plan("ticketure", [], orjson.dumps({**doc, "event_id": event_id}), MAP)
        assert isinstance(result.outcome, Mapped), result.outcome
        assert result.key.startswith(b"sha256:")
        assert len(result.key) == 71
        assert len(result.outcome.batch) < 10_000
        keys.add(result.key)
    assert len(keys) == 1
    short = {**doc, "attributes": {"ticket_order_id": "o" * MAX_KEY_BYTES}}
    assert plan("ticketure", [], orjson.dumps(short), MAP).key == b"o" * MAX_KEY_BYTES


def test_a_record_without_value_is_undecodable() -> None:
    """A tombstone on an input topic is dead-lettered, not mapped."""
    outcome = unmappable(plan("ticketure", [], None, MAP).outcome)
    assert (outcome.reason_code, outcome.reason) == ("undecodable", "value: the record has none")


def record(value: bytes | None, headers: RawHeaders = ()) -> Any:
    """A consumed record as aiokafka hands it over (the fields the map stage reads)."""
    return SimpleNamespace(
        topic=TOPIC, partition=2, offset=41, key=b"k", value=value, headers=list(headers)
    )


PART = Part(TopicPartition(TOPIC, 2), "ticketmatic", producer=None)


def test_a_mapper_bug_is_an_internal_error_logged_once_without_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception escaping the mapping: internal_error naming where, one log line with
    the exception's type and the record's place, never its content."""

    def broken(source: str, value: bytes, item_id: str, account: str | None) -> MapOutcome:
        raise KeyError(value.decode())

    with caplog.at_level(logging.INFO, logger="streamproc.mapper.transaction"):
        result = safe_plan(PART, record(b"secret-content", TM_HEADERS), broken)
    outcome = unmappable(result.outcome)
    assert (outcome.item_type, outcome.reason_code) == ("unknown", INTERNAL_ERROR)
    assert outcome.reason.startswith("streamproc.mapping.record.plan: unexpected KeyError")
    assert result.source == "ticketmatic"
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "unexpected KeyError" in line
    assert f"{TOPIC}[2] offset 41" in line
    assert "secret" not in line
    assert caplog.records[0].exc_info is None


def test_safe_plan_passes_a_good_record_through() -> None:
    """Without a bug the safety net changes nothing: the plan of the record itself."""
    value = orjson.dumps(tm_item())
    headers = [*TM_HEADERS, (envelope.H_ITEM_ID, b"1714557600000-0")]
    expected = plan("ticketmatic", headers, value, MAP)
    assert isinstance(expected.outcome, Mapped)
    assert safe_plan(PART, record(value, headers), MAP) == expected
