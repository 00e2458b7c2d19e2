"""The dead-letter topic: parked records with their reason, and the CLI to see and replay.

A dead-letter record keeps the original key and value byte for byte, the original
headers, and adds ``dlq_reason`` (why), ``dlq_stage`` (who parked it), ``origin_topic``
(where it belongs), ``dlq_time_ms`` and ``dlq_attempt``: how many times the record has
failed, 1 the first time.

``streamproc dlq replay`` sends letters back to their origin topic, key and value
unchanged, without the dlq headers but with ``dlq_attempt`` (the letter's count) and
``dlq_replay_of`` (the letter's ``<partition>:<offset>``), so a fixed stage can take them.
A replayed record that fails again is parked again as a new letter with ``dlq_attempt``
one higher (:class:`DeadLetter` reads the count from the record's headers) and the
``dlq_replay_of`` it came with. Nothing is replayed in a loop:

- replay takes the letters there when it starts, never the ones its own records cause;
- a letter that a later letter names in ``dlq_replay_of`` was replayed and failed again:
  replay skips it, the later letter stands for it (run replay again only once the stage
  has taken what the last one sent, or a record is sent twice);
- a letter of a record that failed ``MAX_ATTEMPTS`` (5) times has the reason
  ``<code>: gave up after 5 attempts: <reason>`` and stays parked: replay sends it only
  with ``--force`` (and if it fails again, its count goes on, 6 and up).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc import kafka, metrics
from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.topics import Topics

H_STAGE = "dlq_stage"
H_TIME = "dlq_time_ms"
H_ATTEMPT = "dlq_attempt"
H_REPLAY_OF = "dlq_replay_of"
# Written by DeadLetter for each letter anew; H_REPLAY_OF is not one: it links the letter
# of a replayed record to the letter it was replayed from.
DLQ_HEADERS = {envelope.H_REASON, H_STAGE, envelope.H_ORIGIN_TOPIC, H_TIME, H_ATTEMPT}
MAX_REASON = 2000
MAX_ATTEMPTS = 5
_COUNT = re.compile(r"^[0-9]{1,9}$")


def attempts(headers: Sequence[tuple[str, bytes | None]] | None) -> int:
    """How many times the record failed before: its ``dlq_attempt`` header, else 0.

    A header that is not a plain count (at most nine digits) counts as absent.
    """
    text = envelope.header(headers, H_ATTEMPT)
    return int(text) if text is not None and _COUNT.match(text) else 0


class DeadLetter:
    """What to write to the DLQ for one record; ``reason_code`` is the metric label.

    ``attempt`` is one more than the record's own ``dlq_attempt`` (a replayed letter's
    count); from ``MAX_ATTEMPTS`` on, the reason says the record was given up on.

    Building one counts nothing: the stage that writes it calls :meth:`count` once Kafka
    has it (after the transaction that holds it commits), so a write that fails, or a
    transaction that aborts and is redone, is not counted twice.
    """

    __slots__ = ("attempt", "headers", "key", "reason", "reason_code", "source", "stage", "value")

    def __init__(
        self,
        *,
        stage: str,
        source: str,
        reason_code: str,
        reason: str,
        origin_topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self.key = key
        self.value = value
        self.stage = stage
        self.source = source
        self.reason_code = reason_code
        self.attempt = attempts(headers) + 1
        if self.attempt >= MAX_ATTEMPTS:
            reason = f"gave up after {self.attempt} attempts: {reason}"
        self.reason = reason
        kept = [(k, v) for k, v in headers if k not in DLQ_HEADERS]
        self.headers: envelope.Headers = [
            *kept,
            (envelope.H_REASON, f"{reason_code}: {reason}"[:MAX_REASON].encode()),
            (H_STAGE, stage.encode()),
            (envelope.H_ORIGIN_TOPIC, origin_topic.encode()),
            (H_TIME, str(int(time.time() * 1000)).encode()),
            (H_ATTEMPT, str(self.attempt).encode()),
        ]

    def count(self) -> None:
        """Count this letter in ``streamproc_dead_lettered_total``: call once it is written."""
        counted(self.stage, self.source, self.reason_code)


def counted(stage: str, source: str, reason_code: str, n: int = 1) -> None:
    """Count ``n`` dead letters of ``stage``, ``source`` and ``reason_code`` that Kafka has."""
    metrics.DEAD_LETTERED.labels(stage, source, reason_code).inc(n)


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_positive(int), default=100, help="at most this many records"
    )
    parser.add_argument("--reason", help="only records whose reason contains this text")
    parser.add_argument(
        "--timeout", type=_positive(float), default=5.0, help="stop after this idle time (s)"
    )
    if parser.prog.endswith(" replay"):
        parser.add_argument(
            "--force",
            action="store_true",
            help=f"also replay letters given up on after {MAX_ATTEMPTS} attempts",
        )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """``dlq inspect`` prints letters as JSON lines; ``dlq replay`` re-sends them too.

    Both read the letters there when they start (up to each partition's end then), so
    replay never takes the letters of what it re-sent itself.
    """
    topic = Topics.for_prefix(settings.topic_prefix).dlq
    replay = args.subcommand == "replay"
    consumer = kafka.consumer(settings.kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    producer = kafka.producer(settings.kafka) if replay else None
    if producer is not None:
        await producer.start()
    count = replayed = 0
    try:
        client = kafka.admin(settings.kafka)
        await client.start()
        try:
            partitions = await kafka.partitions(client, [topic])
        finally:
            await client.close()
        if not partitions:
            print(f"dead-letter topic {topic} does not exist", file=sys.stderr)
            return 1
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        timeout_ms = int(args.timeout * 1000)
        # First pass: which letters were replayed and failed again (a later one names them).
        superseded = {
            ref
            async for record in _letters(consumer, ends, timeout_ms)
            if (ref := envelope.header(record.headers, H_REPLAY_OF)) is not None
        }
        async for record in _letters(consumer, ends, timeout_ms):
            if count >= args.limit:
                break
            reason = envelope.header(record.headers, envelope.H_REASON) or ""
            if args.reason and args.reason not in reason:
                continue
            later = _position(record) in superseded
            if replay and later:
                continue  # the letter of its replay stands for it
            count += 1
            row = _row(record, reason, later)
            if producer is not None:
                row["skipped"] = skip = _skip(row, args.force)
                if skip is None:
                    await producer.send_and_wait(
                        row["origin_topic"],
                        record.value,
                        key=record.key,
                        headers=_replay_headers(record),
                    )
                    replayed += 1
                row["replayed"] = skip is None
            print(orjson.dumps(row).decode())
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    print(f"{count} dead-letter record(s)", file=sys.stderr)
    if replay and replayed < count:
        print(f"{count - replayed} not replayed (see each one's 'skipped')", file=sys.stderr)
    return 0


async def _letters(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], timeout_ms: int
) -> AsyncIterator[Any]:
    """Every letter before ``ends``, from the beginning; stops early after ``timeout_ms``
    without any record (a broker too slow to answer)."""
    await consumer.seek_to_beginning(*ends)
    left = [tp for tp in ends if await consumer.position(tp) < ends[tp]]
    while left:
        batch = await consumer.getmany(*left, timeout_ms=timeout_ms)
        if not batch:
            return
        for tp, records in batch.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        left = [tp for tp in left if await consumer.position(tp) < ends[tp]]


def _position(record: Any) -> str:
    """What ``dlq_replay_of`` says of a letter: ``<partition>:<offset>``."""
    return f"{record.partition}:{record.offset}"


def _row(record: Any, reason: str, superseded: bool) -> dict[str, Any]:
    return {
        "partition": record.partition,
        "offset": record.offset,
        "reason": reason,
        "stage": envelope.header(record.headers, H_STAGE),
        "origin_topic": envelope.header(record.headers, envelope.H_ORIGIN_TOPIC),
        "attempt": attempts(record.headers),
        "superseded": superseded,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "value": record.value.decode("utf-8", "replace") if record.value is not None else None,
        "replayed": False,
    }


def _skip(row: dict[str, Any], force: bool) -> str | None:
    """Why replay keeps a letter parked, or None to replay it."""
    if not row["origin_topic"]:
        return "no origin_topic header"
    if row["attempt"] >= MAX_ATTEMPTS and not force:
        return f"gave up after {row['attempt']} attempts (--force replays it)"
    return None


def _replay_headers(record: Any) -> list[tuple[str, bytes | None]]:
    """The letter's headers without the dlq ones, plus its count and where it was."""
    kept = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS and k != H_REPLAY_OF]
    return [
        *kept,
        (H_ATTEMPT, str(attempts(record.headers)).encode()),
        (H_REPLAY_OF, _position(record).encode()),
    ]
