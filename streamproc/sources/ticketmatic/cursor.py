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
from collections.abc import Iterable

import msgspec
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from streamproc import changelog, kafka
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
    so nothing committed later can be missed. The topic is read to its end as
    :func:`streamproc.changelog.read_to_end` does; a partition still held after
    ``settle_s`` (default: the transaction timeout and 5 s) by a transaction the broker is
    not settling is read to its last stable offset instead, with a warning, because an
    older cursor only makes the poller fetch some items again (dedupe drops them), while
    waiting would let the retention run out. Raises KafkaTimeoutError if even that is not
    read within ``timeout_s``.
    """
    settle = settings.kafka.transaction_timeout_ms / 1000 + 5 if settle_s is None else settle_s
    cursors: dict[str, Cursor] = {}
    reader = kafka.consumer(settings.kafka, group_id=None)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        await changelog.read_to_end(
            reader,
            tps,
            lambda _tp, record: _take(cursors, record.key, record.value),
            timeout_s=timeout_s,
            settle_s=settle,
        )
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
