"""The dead-letter topic: records keep their bytes and reason; the CLI shows and replays."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from streamproc import kafka
from streamproc.config import Settings
from streamproc.dlq import H_ATTEMPT, H_REPLAY_OF, DeadLetter
from streamproc.formats import envelope
from streamproc.topics import Topics
from tests.mapper.test_processor import Out
from tests.mapper.test_processor import read_topic as read_out
from tests.procs import settings_env
from tests.topics import read_topic

pytestmark = pytest.mark.kafka


async def park(settings: Settings, n: int, headers: Sequence[tuple[str, bytes]] = ()) -> None:
    """Write ``n`` letters of the map stage, their records having ``headers`` too."""
    names = Topics.for_prefix(settings.topic_prefix)
    letters = [
        DeadLetter(
            stage="map",
            source="ticketmatic",
            reason_code="missing_field" if i % 2 == 0 else "undecodable",
            reason=f"data.ref: required (item {i})",
            origin_topic=names.ticketmatic,
            key=b"acme:user%d" % i,
            value=b'{"id": "%d"}' % i,
            headers=[(envelope.H_ITEM_ID, b"%d" % i), *headers],
        )
        for i in range(n)
    ]
    await send(settings, letters)


async def send(settings: Settings, letters: list[DeadLetter]) -> None:
    names = Topics.for_prefix(settings.topic_prefix)
    producer = kafka.producer(settings.kafka)
    await producer.start()
    try:
        for letter in letters:
            await producer.send_and_wait(
                names.dlq, letter.value, key=letter.key, headers=letter.headers
            )
    finally:
        await producer.stop()


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_inspect_shows_reason_and_original_bytes(kafka_settings: Settings) -> None:
    """`dlq inspect` prints each parked record with its reason, stage and original value."""
    await park(kafka_settings, 4)
    result = cli(kafka_settings, "dlq", "inspect", "--timeout", "2")
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4
    by_value = {row["value"]: row for row in rows}
    assert by_value['{"id": "1"}']["reason"] == "undecodable: data.ref: required (item 1)"
    assert {row["stage"] for row in rows} == {"map"}
    assert {(row["attempt"], row["superseded"], row["replayed"]) for row in rows} == {
        (1, False, False)
    }
    filtered = cli(kafka_settings, "dlq", "inspect", "--reason", "missing_field", "--timeout", "2")
    assert len(filtered.stdout.splitlines()) == 2


async def test_replay_sends_records_back_unchanged(
    kafka_settings: Settings, unique: Callable[[str], str]
) -> None:
    """`dlq replay` puts each record back on its origin topic, same key, value and ids."""
    await park(kafka_settings, 3)
    result = cli(kafka_settings, "dlq", "replay", "--timeout", "2")
    assert result.returncode == 0, result.stderr
    origin = Topics.for_prefix(kafka_settings.topic_prefix).ticketmatic
    got = await read_topic(kafka_settings, origin)  # the replay has returned: all is there
    assert sorted(m.value for m in got) == [b'{"id": "%d"}' % i for i in range(3)]
    for m in got:
        names = {k for k, _ in m.headers}
        assert envelope.H_REASON not in names
        assert envelope.header(m.headers, envelope.H_ITEM_ID) == m.value.decode()[8:9]
        assert envelope.header(m.headers, H_ATTEMPT) == "1"
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert sorted(str(envelope.header(m.headers, H_REPLAY_OF)) for m in got) == sorted(
        f"{row['partition']}:{row['offset']}" for row in rows
    )


async def origin_records(settings: Settings, expected: int) -> list[Out]:
    """Every record of the Ticketmatic topic (where the parked letters came from)."""
    names = Topics.for_prefix(settings.topic_prefix)
    return await read_out(settings, names.ticketmatic, expected, timeout_s=10)


def replay(settings: Settings, *options: str) -> list[dict[str, Any]]:
    result = cli(settings, "dlq", "replay", "--timeout", "2", *options)
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


async def test_a_letter_replayed_and_failed_again_is_not_replayed_twice(
    kafka_settings: Settings,
) -> None:
    """Replay, fail again (attempt 2, naming the first letter), replay again: only the new
    letter goes back, with its count; the first one shows as superseded."""
    await park(kafka_settings, 1)
    first = replay(kafka_settings)
    assert [(row["attempt"], row["replayed"]) for row in first] == [(1, True)]
    [again] = await origin_records(kafka_settings, 1)
    assert again.headers[H_REPLAY_OF] == f"{first[0]['partition']}:{first[0]['offset']}"
    # The stage fails on it again: its letter comes from the replayed record's headers.
    failed = DeadLetter(
        stage="map",
        source="ticketmatic",
        reason_code="missing_field",
        reason="data.ref: required",
        origin_topic=Topics.for_prefix(kafka_settings.topic_prefix).ticketmatic,
        key=again.key,
        value=again.value or b"",
        headers=[(k, v.encode()) for k, v in again.headers.items()],
    )
    await send(kafka_settings, [failed])
    shown = cli(kafka_settings, "dlq", "inspect", "--timeout", "2")
    rows = sorted((orjson.loads(line) for line in shown.stdout.splitlines()), key=by_attempt)
    assert [(r["attempt"], r["superseded"]) for r in rows] == [(1, True), (2, False)]
    second = replay(kafka_settings)
    assert [(row["attempt"], row["replayed"]) for row in second] == [(2, True)]
    out = await origin_records(kafka_settings, 2)
    assert len(out) == 2
    assert out[1].value == out[0].value
    assert out[1].headers[H_ATTEMPT] == "2"
    assert out[1].headers[H_REPLAY_OF] == f"{second[0]['partition']}:{second[0]['offset']}"


def by_attempt(row: dict[str, Any]) -> int:
    return int(row["attempt"])


async def test_a_letter_given_up_on_is_replayed_only_with_force(kafka_settings: Settings) -> None:
    """The fifth failure's letter says it was given up on; replay keeps it parked, and
    sends it only with --force (its count kept)."""
    await park(kafka_settings, 1, [(H_ATTEMPT, b"4")])
    [row] = replay(kafka_settings)
    assert (row["attempt"], row["replayed"]) == (5, False)
    assert row["reason"] == "missing_field: gave up after 5 attempts: data.ref: required (item 0)"
    assert row["skipped"] == "gave up after 5 attempts (--force replays it)"
    assert await origin_records(kafka_settings, 0) == []
    [row] = replay(kafka_settings, "--force")
    assert (row["replayed"], row["skipped"]) == (True, None)
    [sent] = await origin_records(kafka_settings, 1)
    assert sent.headers[H_ATTEMPT] == "5"
