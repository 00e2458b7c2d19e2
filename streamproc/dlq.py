"""The dead-letter topic: parked records with their reason, and the CLI to see and replay.

A dead-letter record keeps the original key and value byte for byte, the original
headers, and adds ``dlq_reason`` (why), ``dlq_stage`` (who parked it), ``origin_topic``
(where it belongs) and ``dlq_time_ms``. ``streamproc dlq replay`` sends records back to
their origin topic unchanged (without the dlq headers), so a fixed mapper can take them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import orjson

from streamproc import kafka, metrics
from streamproc.config import Settings
from streamproc.topics import Topics

H_STAGE = "dlq_stage"
H_TIME = "dlq_time_ms"
DLQ_HEADERS = {kafka.H_REASON, H_STAGE, kafka.H_ORIGIN_TOPIC, H_TIME}
MAX_REASON = 2000


class DeadLetter:
    """What to write to the DLQ for one record; ``reason_code`` is the metric label.

    Building one counts nothing: the stage that writes it calls :meth:`count` once Kafka
    has it (after the transaction that holds it commits), so a write that fails, or a
    transaction that aborts and is redone, is not counted twice.
    """

    __slots__ = ("headers", "key", "reason", "reason_code", "source", "stage", "value")

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
        self.reason = reason
        kept = [(k, v) for k, v in headers if k not in DLQ_HEADERS]
        self.headers: kafka.Headers = [
            *kept,
            (kafka.H_REASON, f"{reason_code}: {reason}"[:MAX_REASON].encode()),
            (H_STAGE, stage.encode()),
            (kafka.H_ORIGIN_TOPIC, origin_topic.encode()),
            (H_TIME, str(int(time.time() * 1000)).encode()),
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


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """``dlq inspect`` prints records as JSON lines; ``dlq replay`` re-sends them."""
    topic = Topics.for_prefix(settings.topic_prefix).dlq
    consumer = kafka.consumer(settings.kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    producer = kafka.producer(settings.kafka) if args.subcommand == "replay" else None
    if producer is not None:
        await producer.start()
    count = 0
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
        await consumer.seek_to_beginning(*partitions)
        while count < args.limit:
            batch = await consumer.getmany(timeout_ms=int(args.timeout * 1000))
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    reason = kafka.header(record.headers, kafka.H_REASON) or ""
                    if (args.reason and args.reason not in reason) or count >= args.limit:
                        continue
                    count += 1
                    origin = kafka.header(record.headers, kafka.H_ORIGIN_TOPIC)
                    if producer is not None and origin:
                        headers = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
                        await producer.send_and_wait(
                            origin, record.value, key=record.key, headers=headers
                        )
                    print(
                        orjson.dumps(
                            {
                                "partition": record.partition,
                                "offset": record.offset,
                                "reason": reason,
                                "stage": kafka.header(record.headers, H_STAGE),
                                "origin_topic": origin,
                                "key": record.key.decode("utf-8", "replace")
                                if record.key
                                else None,
                                "value": record.value.decode("utf-8", "replace"),
                                "replayed": producer is not None and bool(origin),
                            }
                        ).decode()
                    )
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    print(f"{count} dead-letter record(s)", file=sys.stderr)
    return 0
