"""The dead-letter topic: records keep their bytes and reason; the CLI shows and replays."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from streamproc import kafka
from streamproc.config import Settings
from streamproc.dlq import DeadLetter
from streamproc.topics import Topics
from tests.procs import settings_env

pytestmark = pytest.mark.kafka


async def park(settings: Settings, n: int) -> None:
    names = Topics.for_prefix(settings.topic_prefix)
    producer = kafka.producer(settings.kafka)
    await producer.start()
    try:
        for i in range(n):
            letter = DeadLetter(
                stage="map",
                source="ticketmatic",
                reason_code="missing_field" if i % 2 == 0 else "undecodable",
                reason=f"data.ref: required (item {i})",
                origin_topic=names.ticketmatic,
                key=b"acme:user%d" % i,
                value=b'{"id": "%d"}' % i,
                headers=[(kafka.H_ITEM_ID, b"%d" % i)],
            )
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
    consumer = kafka.consumer(kafka_settings.kafka, origin, group_id=unique("check"))
    await consumer.start()
    got: list[Any] = []
    try:
        while len(got) < 3:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "replayed records did not arrive"
            got += [m for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    assert sorted(m.value for m in got) == [b'{"id": "%d"}' % i for i in range(3)]
    for m in got:
        names = {k for k, _ in m.headers}
        assert kafka.H_REASON not in names
        assert kafka.header(m.headers, kafka.H_ITEM_ID) == m.value.decode()[8:9]
