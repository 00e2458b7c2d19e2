"""Reading a compacted changelog topic to its end: the one restore of dedupe and cursors.

A role that keeps state in a compacted topic (the map stage's dedupe ids, the poller's
cursors) reads it back at start-up, ``read_committed``, from the beginning to the high
watermark the reader sees on its first fetch. Up to the high watermark, not the last
stable offset: the caller has initialised its transactional producers first, so every
earlier owner's transaction is settled, and a later committed record of this state may
still sit behind another writer's transaction in flight (it ends within the transaction
timeout). A partition whose last stable offset stays below that mark is held by a
transaction the broker is not settling (see the runbook, StuckTransaction). What then is
the caller's choice:

- ``settle_s=None`` (dedupe): wait, up to ``timeout_s``; the error names the partitions
  held and where. Reading less would forget ids, and deliver them twice;
- ``settle_s`` set (cursors): after that long, a partition whose reader stands at its last
  stable offset is given up there, with a warning, and the read goes on. An older cursor
  only makes the poller fetch some items again (dedupe drops them), while waiting would
  let Ticketmatic's 4 h retention run out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

log = logging.getLogger(__name__)

Take = Callable[[TopicPartition, Any], None]  # (partition, ConsumerRecord)


async def read_to_end(
    reader: AIOKafkaConsumer,
    tps: list[TopicPartition],
    take: Take,
    *,
    timeout_s: float,
    settle_s: float | None = None,
) -> list[TopicPartition]:
    """Hand every record of ``tps`` to ``take``, in order per partition; return the
    partitions given up at their last stable offset (only with ``settle_s``).

    ``reader`` is a ``read_committed`` consumer outside any group; the caller owns it and
    stops it afterwards (not ``unsubscribe()`` then ``stop()``: aiokafka's stop then waits a
    whole request timeout for the fetch left behind). Raises KafkaTimeoutError (retriable)
    if the end is not reached within ``timeout_s``.
    """
    if not tps:
        return []
    start = time.monotonic()
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    targets: dict[TopicPartition, int] = {}
    given_up: list[TopicPartition] = []
    pending = list(tps)
    while True:
        batch = await reader.getmany(*pending, timeout_ms=200)
        for tp, records in batch.items():
            for record in records:
                take(tp, record)
        for tp in pending:
            highwater = reader.highwater(tp)
            if tp not in targets and highwater is not None:
                targets[tp] = highwater
        pending = [tp for tp in pending if not await _reached(reader, tp, targets)]
        if not pending:
            return given_up
        waited = time.monotonic() - start
        if settle_s is not None and waited > settle_s:
            for tp in await _held(reader, pending, targets):
                log.warning(
                    "%s[%d] is pinned at offset %s below its high watermark %d for more than "
                    "%.0f s: a hanging transaction? (see the runbook, StuckTransaction); "
                    "read what is readable",
                    tp.topic,
                    tp.partition,
                    reader.last_stable_offset(tp),
                    targets[tp],
                    settle_s,
                )
                given_up.append(tp)
                pending.remove(tp)
            if not pending:
                return given_up
        if waited > timeout_s:
            held = [
                f"{tp.topic}[{tp.partition}] at {reader.last_stable_offset(tp)} of {targets[tp]}"
                for tp in await _held(reader, pending, targets)
            ]
            why = (
                f" (held by an open transaction: last stable offset {', '.join(held)}; see the "
                "runbook, StuckTransaction)"
                if held
                else ""
            )
            raise KafkaTimeoutError(
                f"restoring {tps[0].topic}: end not reached in {timeout_s:g} s{why}"
            )
        await asyncio.sleep(0)


async def _reached(
    reader: AIOKafkaConsumer, tp: TopicPartition, targets: dict[TopicPartition, int]
) -> bool:
    return tp in targets and await reader.position(tp) >= targets[tp]


async def _held(
    reader: AIOKafkaConsumer, pending: list[TopicPartition], targets: dict[TopicPartition, int]
) -> list[TopicPartition]:
    """Of ``pending``, the partitions whose reader stands at a last stable offset below the
    target: held by an open transaction."""
    held = []
    for tp in pending:
        stable, target = reader.last_stable_offset(tp), targets.get(tp)
        if stable is None or target is None or stable >= target:
            continue
        if await reader.position(tp) >= stable:
            held.append(tp)
    return held
