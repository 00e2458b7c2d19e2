"""What a dead letter says: its reason, stage, origin and how many times the record failed."""

from __future__ import annotations

import pytest

from streamproc.dlq import H_ATTEMPT, H_REPLAY_OF, H_STAGE, MAX_ATTEMPTS, DeadLetter, attempts
from streamproc.formats import envelope


def letter(headers: list[tuple[str, bytes]]) -> DeadLetter:
    return DeadLetter(
        stage="map",
        source="ticketure",
        reason_code="undecodable",
        reason="record: not JSON",
        origin_topic="t.ticketure.audit",
        key=b"k",
        value=b"{",
        headers=headers,
    )


def test_a_first_failure_is_attempt_one() -> None:
    """A record that never failed before gives a letter with dlq_attempt 1 and its reason."""
    parked = letter([(envelope.H_ITEM_ID, b"e1")])
    assert parked.attempt == 1
    assert parked.headers[0] == (envelope.H_ITEM_ID, b"e1")
    assert envelope.header(parked.headers, H_ATTEMPT) == "1"
    assert envelope.header(parked.headers, envelope.H_REASON) == "undecodable: record: not JSON"
    assert envelope.header(parked.headers, H_STAGE) == "map"
    assert envelope.header(parked.headers, envelope.H_ORIGIN_TOPIC) == "t.ticketure.audit"


def test_a_replayed_record_failing_again_counts_one_more() -> None:
    """The count comes from the record's dlq_attempt; the old dlq headers are replaced, the
    link to the letter it was replayed from is kept."""
    old = letter([])
    replayed = [
        *[(k, v) for k, v in old.headers if k == envelope.H_REASON],  # a stale one, to replace
        (H_ATTEMPT, b"2"),
        (H_REPLAY_OF, b"1:40"),
    ]
    parked = letter(replayed)
    assert parked.attempt == 3
    names = [k for k, _ in parked.headers]
    assert names.count(envelope.H_REASON) == names.count(H_ATTEMPT) == 1
    assert envelope.header(parked.headers, H_ATTEMPT) == "3"
    assert envelope.header(parked.headers, H_REPLAY_OF) == "1:40"


def test_from_the_last_attempt_on_the_reason_says_it_was_given_up() -> None:
    """The letter of a record's fifth failure says so before its own reason."""
    assert "gave up" not in letter([(H_ATTEMPT, b"%d" % (MAX_ATTEMPTS - 2))]).reason
    parked = letter([(H_ATTEMPT, b"%d" % (MAX_ATTEMPTS - 1))])
    assert parked.attempt == MAX_ATTEMPTS == 5
    assert envelope.header(parked.headers, envelope.H_REASON) == (
        "undecodable: gave up after 5 attempts: record: not JSON"
    )
    assert letter([(H_ATTEMPT, b"7")]).reason.startswith("gave up after 8 attempts")


@pytest.mark.parametrize(
    "value", [b"", b"-1", b"1.5", b"x", b"\xff", b"9" * 10, b" 2", b"\xd9\xa3", None]
)
def test_an_unreadable_count_counts_as_none(value: bytes | None) -> None:
    """A dlq_attempt that is not a plain count of up to nine digits counts as 0."""
    assert attempts([(H_ATTEMPT, value)]) == 0
    assert letter([(H_ATTEMPT, value)]).attempt == 1  # type: ignore[list-item]


def test_the_first_count_header_is_read() -> None:
    """A count of up to nine digits is read as is."""
    assert attempts([(H_ATTEMPT, b"123456789"), (H_ATTEMPT, b"1")]) == 123456789
    assert attempts(None) == attempts([]) == 0
