"""A transaction held open on one partition: what a broker stopped mid-transaction leaves
behind (a "hanging" transaction pinning the partition's last stable offset)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from streamproc import kafka
from streamproc.config import KafkaSettings


@dataclass
class OpenTransaction:
    producer: AIOKafkaProducer
    offset: int  # of the record the transaction holds
    open: bool = True

    async def abort(self) -> None:
        """End the transaction (once); its record is never readable ``read_committed``."""
        if self.open:
            self.open = False
            await self.producer.abort_transaction()


@contextlib.asynccontextmanager
async def open_transaction(
    settings: KafkaSettings,
    transactional_id: str,
    topic: str,
    partition: int,
    *,
    key: bytes | None = None,
    value: bytes = b"held",
) -> AsyncIterator[OpenTransaction]:
    """One record on ``topic[partition]`` in a transaction left open (10 min timeout)
    until :meth:`OpenTransaction.abort` or the end of the block."""
    producer = kafka.producer(
        settings, transactional_id=transactional_id, transaction_timeout_ms=600_000
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        sent = await producer.send_and_wait(topic, value, key=key, partition=partition)
        held = OpenTransaction(producer, sent.offset)
        try:
            yield held
        finally:
            await held.abort()
    finally:
        await producer.stop()
