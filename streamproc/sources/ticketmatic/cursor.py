"""Cursors: where each account's eventstream was read up to, kept in a compacted topic.

One record per account (key = the account name), written in the same Kafka transaction as
the items it covers, so a cursor never runs ahead of, or behind, what is in the topic. The
record of an account goes to partition ``cursor_partition(account, n)``: the replica that
owns that partition in the poller group polls the account (see ``ownership``).

Restoring reads every partition (so a changed partition count loses nothing) up to the
high watermark taken at the start, ``read_committed``: the wait covers transactions of
other accounts still open in the same partition, which would otherwise hide a later
committed cursor of this account behind the last stable offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import msgspec
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from streamproc import kafka
from streamproc.config import Settings
from streamproc.formats.ticketmatic import Cursor, decode_cursor, newer

log = logging.getLogger(__name__)


def cursor_partition(account: str, partitions: int) -> int:
    """The cursors-topic partition of ``account``: Kafka's own murmur2 of the key."""
    return int(murmur2(account.encode("utf-8")) & 0x7FFFFFFF) % partitions


async def restore(
    settings: Settings,
    topic: str,
    partitions: Iterable[int],
    timeout_s: float = 60.0,
    settle_s: float | None = None,
) -> dict[str, Cursor]:
    """The latest committed cursor of every account found in ``topic``'s ``partitions``.

    Call it only after this replica's transactional producers for the accounts it cares
    about are initialised: that fences older owners and settles their open transactions,
    so nothing committed later can be missed. The topic is read to the high watermark
    taken at the start, which waits for other accounts' transactions in flight (they end
    within the transaction timeout). A partition still short of it after ``settle_s``
    (default: the transaction timeout and 5 s) is pinned by a transaction the broker is
    not settling (a hanging transaction, see the runbook's StuckTransaction): it is read
    to its last stable offset instead, with a warning, because an older cursor only makes
    the poller fetch some items again (dedupe drops them), while waiting would let the
    retention run out. Raises TimeoutError if even that is not read within ``timeout_s``.
    """
    start = time.monotonic()
    settle = settings.kafka.transaction_timeout_ms / 1000 + 5 if settle_s is None else settle_s
    deadline = start + timeout_s
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    probe = kafka.consumer(settings.kafka, isolation_level="read_uncommitted", group_id=None)
    await probe.start()
    try:
        high = await probe.end_offsets(tps)
    finally:
        await probe.stop()
    cursors: dict[str, Cursor] = {}
    wanted = {tp: end for tp, end in high.items() if end > 0}
    if not wanted:
        return cursors
    reader = kafka.consumer(settings.kafka, group_id=None)
    await reader.start()
    try:
        reader.assign(list(wanted))
        await reader.seek_to_beginning(*wanted)
        while True:
            pending = [tp for tp, end in wanted.items() if await reader.position(tp) < end]
            if not pending:
                break
            if time.monotonic() - start > settle:
                stable = await reader.end_offsets(pending)  # read_committed: the LSO
                if all([await reader.position(tp) >= stable[tp] for tp in pending]):
                    for tp in pending:
                        log.warning(
                            "cursor partition %s is pinned at offset %d below its high "
                            "watermark %d for more than %.0f s: a hanging transaction? (see "
                            "the runbook, StuckTransaction); restored what is readable",
                            tp,
                            stable[tp],
                            wanted[tp],
                            settle,
                        )
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"cursor topic {topic} not read to its end in {timeout_s} s")
            batch = await reader.getmany(*pending, timeout_ms=500)
            for records in batch.values():
                for record in records:
                    _take(cursors, record.key, record.value)
    finally:
        await reader.stop()
    return cursors


def _take(cursors: dict[str, Cursor], key: bytes | None, value: bytes | None) -> None:
    if key is None or value is None:
        return
    account = key.decode("utf-8", "replace")
    try:
        cursor = decode_cursor(value)
    except msgspec.DecodeError:
        log.warning("cursor record of account %s is not a cursor; ignored", account)
        return
    cursors[account] = newer(cursors.get(account), cursor)
