"""`streamproc map` as a real process: SIGKILL inside a transaction, restart, SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from streamproc import kafka, topics
from streamproc.config import Settings
from streamproc.topics import Topics
from tests.localkafka import free_port
from tests.mapper.test_processor import (
    assert_order_per_key,
    item_ids,
    produce_tm,
    tm_item,
    wait_output,
)
from tests.procs import Proc, settings_env, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class OutputEnds:
    """Offsets of the batches topic as read_committed and read_uncommitted readers see them.

    A transaction left open shows as written offsets beyond the last stable offset.
    """

    def __init__(self, settings: Settings) -> None:
        topic = Topics.for_prefix(settings.topic_prefix).batches
        self.tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        self.readers = [
            kafka.consumer(settings.kafka, group_id=None, isolation_level=level)
            for level in ("read_committed", "read_uncommitted")
        ]

    async def __aenter__(self) -> OutputEnds:
        for reader in self.readers:
            await reader.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for reader in self.readers:
            await reader.stop()

    async def committed_and_written(self) -> tuple[int, int]:
        committed, written = [
            sum((await reader.end_offsets(self.tps)).values()) for reader in self.readers
        ]
        return committed, written


async def test_sigkill_inside_a_transaction_then_restart_gives_every_batch_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Killed with a transaction open, restarted: every item exactly once, in order per key."""
    settings = make_settings(partitions=3, metrics_host="127.0.0.1", metrics_port=free_port())
    await topics.ensure(settings)
    now = int(time.time() * 1000)
    items = [tm_item(i, f"visitor-{i % 11}", now + i) for i in range(6000)]
    await produce_tm(settings, items)
    env = settings_env(settings)
    killed_inside = False
    async with OutputEnds(settings) as ends:

        async def mid_transaction() -> bool:
            committed, written = await ends.committed_and_written()
            return 0 < committed < written

        for attempt in range(4):
            proc = Proc(["map", "--max-records", "500"], env, tmp_path / f"map-{attempt}.log")
            try:
                await wait_for(mid_transaction, timeout_s=60, interval_s=0.01, what="open txn")
            finally:
                proc.kill()
            committed, written = await ends.committed_and_written()
            if committed < written:  # the dead process's transaction is still open
                killed_inside = True
                break
    assert killed_inside, "never managed to kill the process inside a transaction"
    proc = Proc(["map"], env, tmp_path / "map-final.log")
    try:
        out = await wait_output(settings, len(items), timeout_s=90)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output()[-3000:]
    assert sorted(item_ids(out)) == sorted(i["id"] for i in items)
    assert_order_per_key(out)
